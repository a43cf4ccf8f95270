"""Prototype similarity curves of adaptation runs, from the TensorBoard scalars the PrototypeBank logs.

    python scripts/prototype_curves.py RUN_DIR [RUN_DIR ...] [--at 50 400 800 1200 1600]

Prints, for each run, the `prototypes/*` scalars (cosine similarities of the class mean prototypes μ̄¹ / μ̄⁰ and
of the foreground prototypes, and the last contrastive loss) at the given iterations (the logged step nearest each;
`tensorboard --logdir RUN_DIR` draws the whole curves). A run without such scalars (contrast off) is reported, not
skipped silently.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.errors import OneLineParser, fail  # noqa: E402

PREFIX = "prototypes/"


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} of every `prototypes/*` scalar in the run's event files (later files win)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves: dict[str, dict[int, float]] = {}
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            if tag.startswith(PREFIX):
                curves.setdefault(tag, {}).update({e.step: e.value for e in accumulator.Scalars(tag)})
    return {tag: sorted(points.items()) for tag, points in sorted(curves.items())}


def value_near(points: list[tuple[int, float]], step: int) -> float:
    """The value logged at the step nearest `step`."""
    return min(points, key=lambda point: abs(point[0] - step))[1]


def main(argv: list[str] | None = None) -> int:
    """Print the table for the given runs."""
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--at", nargs="+", type=int, default=[50, 400, 800, 1200, 1600], help="iterations to print")
    args = parser.parse_args(argv)
    for run in args.runs:
        if not run.is_dir():
            fail(f"{run}: not a folder; pass an adaptation run's --output_dir")
    curves = {run: read_scalars(run) for run in args.runs}
    for run, tags in curves.items():
        print(f"{run}")
        if not tags:
            print("  no prototypes/* scalars (contrast off, or no PrototypeBank log)")
            continue
        print("  " + f"{'scalar':<34}" + "".join(f"{f'it {s}':>10}" for s in args.at))
        for tag, points in tags.items():
            print("  " + f"{tag[len(PREFIX):]:<34}" + "".join(f"{value_near(points, s):>10.3f}" for s in args.at))
    return 0


if __name__ == "__main__":
    sys.exit(main())

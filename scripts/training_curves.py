"""Training curves of adaptation runs, from the TensorBoard scalars they logged: the loss terms and the prototypes.

    python scripts/training_curves.py RUN_DIR [RUN_DIR ...] [--at 50 400 800 1200 1600] [--window 100] [--prefix loss_terms/]

Prints, for each run and each scalar under the prefixes (default `loss_terms/`: every unweighted term of the loss,
by domain, logged every 10 iterations by finetune.yaml's `loss_terms` handlers; `prototypes/`: the PrototypeBank's
cosine similarities of the class mean prototypes and the last contrastive loss), its mean over the logged steps in
(step − window, step] at each of the given iterations (the nearest logged step when none lies in the window; with
`--window 0`, always that). `tensorboard --logdir RUN_DIR` draws the whole curves. A run without such scalars is
reported, not skipped silently.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.errors import OneLineParser, fail  # noqa: E402

PREFIXES = ("loss_terms/", "prototypes/")


def read_scalars(run_dir: Path, prefixes: tuple[str, ...] = PREFIXES) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} of every scalar under `prefixes` in the run's event files (later files win)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves: dict[str, dict[int, float]] = {}
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            if tag.startswith(prefixes):
                curves.setdefault(tag, {}).update({e.step: e.value for e in accumulator.Scalars(tag)})
    return {tag: sorted(points.items()) for tag, points in sorted(curves.items())}


def value_at(points: list[tuple[int, float]], step: int, window: int = 0) -> float:
    """Mean of the values logged in (step − window, step]; the value at the nearest logged step when there are none."""
    inside = [value for at, value in points if step - window < at <= step]
    return sum(inside) / len(inside) if inside else min(points, key=lambda point: abs(point[0] - step))[1]


def main(argv: list[str] | None = None) -> int:
    """Print the table for the given runs."""
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--at", nargs="+", type=int, default=[50, 400, 800, 1200, 1600], help="iterations to print")
    parser.add_argument("--window", type=int, default=100, help="iterations averaged up to each --at (0: the nearest)")
    parser.add_argument("--prefix", nargs="+", default=["loss_terms/"], choices=PREFIXES, help="scalar groups to print")
    args = parser.parse_args(argv)
    for run in args.runs:
        if not run.is_dir():
            fail(f"{run}: not a folder; pass an adaptation run's --output_dir")
    if args.window < 0:
        fail(f"--window: {args.window} is negative; pass a number of iterations (0: the nearest logged step)")
    prefixes = tuple(args.prefix)
    for run in args.runs:
        tags = read_scalars(run, prefixes)
        print(f"{run}")
        if not tags:
            print(f"  no {' or '.join(p + '*' for p in prefixes)} scalars (a run made before they were logged, or contrast off)")
            continue
        print("  " + f"{'scalar':<34}" + "".join(f"{f'it {s}':>10}" for s in args.at))
        for tag, points in tags.items():
            print("  " + f"{tag:<34}" + "".join(f"{value_at(points, s, args.window):>10.4g}" for s in args.at))
    return 0


if __name__ == "__main__":
    sys.exit(main())

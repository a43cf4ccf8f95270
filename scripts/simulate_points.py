"""Simulate point annotations: click a random fraction of the instances of every slice at their centres.

Example:
    python scripts/simulate_points.py --instances training_instances.tif --fraction 0.15 --seed 1 \
        [--displacement 5] [--slices 0-119] [--min-per-slice 1] [--napari] --output points.csv

The written z values are slice indices of the full --instances volume, also with --slices.
Bad input prints one line 'mitoda: error: ...' on stderr, exits with code 2 and writes no file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from bundle.errors import OneLineParser as _Parser, fail as _fail  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = _Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", required=True, help="instance volume (per-slice ids) or an 8-bit mask")
    parser.add_argument("--fraction", required=True, type=float, help="share of the instances of each slice, 0-1")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--displacement", type=float, default=0.0, help="move each point by up to this many pixels")
    parser.add_argument("--slices", default=None, help="slices to annotate, e.g. '0-119' (default: all)")
    parser.add_argument("--min-per-slice", type=int, default=0, help="at least this many points per slice")
    parser.add_argument("--napari", action="store_true", help="write a napari Points CSV instead of z,y,x")
    parser.add_argument("--output", required=True, help="CSV file to write")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the tool; return the exit code."""
    args = _parser().parse_args(argv)
    if not 0.0 <= args.fraction <= 1.0:
        _fail(f"--fraction {args.fraction} is not in [0, 1]; pass e.g. 0.15 for 15 % of the instances")
    if not args.displacement >= 0.0 or args.displacement == float("inf"):
        _fail(f"--displacement {args.displacement} is not a finite number of pixels >= 0; pass e.g. 5")
    if args.min_per_slice < 0:
        _fail(f"--min-per-slice {args.min_per_slice} is negative; pass 0 or more")
    output = Path(args.output).expanduser()
    if output.is_dir():
        _fail(f"{output}: is a folder; pass the name of the CSV file to write")

    import numpy as np

    from bundle.data.io import parse_slices, read_label_instances
    from bundle.data.points import simulate_points, write_points
    from bundle.errors import InputError

    try:
        instances = read_label_instances(args.instances)
        slices = parse_slices(args.slices, int(instances.shape[0]), "--slices")
    except InputError as exc:
        _fail(str(exc))
    selected = instances[slices]
    points = simulate_points(selected, args.fraction, args.seed, args.displacement, args.min_per_slice)
    total = sum(int(np.count_nonzero(np.unique(labels))) for labels in selected)
    if len(points) == 0:
        _fail(
            f"{args.instances}: no points selected ({total} instances on {len(slices)} slices at fraction "
            f"{args.fraction}); raise --fraction or pass --min-per-slice 1"
        )
    points[:, 0] = np.asarray(slices, dtype=np.int64)[points[:, 0]]  # back to slice indices of the full volume
    try:
        write_points(output, points, napari=args.napari)
    except OSError as exc:
        _fail(f"{output}: cannot be written ({exc.strerror or exc}); check the folder exists and is writable")
    share = 100.0 * len(points) / total if total else 0.0
    print(
        f"wrote {len(points)} points for {total} instances ({share:.1f} %) on {len(slices)} slices "
        f"to {output}{' (napari format)' if args.napari else ''}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

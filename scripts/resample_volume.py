"""Resample an EM volume (or its labels) slice by slice, e.g. to make a coarser copy for a pixel-size check.

    python scripts/resample_volume.py --input VOL --factor 0.5 --output OUT.tif [--labels] [--slices 120-164]

`--factor` multiplies the number of pixels along y and x (0.5: half the size, as if imaged at twice the pixel
size). Intensities are resampled bilinearly with anti-aliasing, `--labels` by nearest neighbour. The output has no
pixel-size metadata: predict it with `--pixel_size` or without.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.errors import InputError, OneLineParser, fail  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Read, resample, write."""
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="volume (Z, Y, X) or labels")
    parser.add_argument("--factor", type=float, required=True, help="scale of y and x (0.5: half the size)")
    parser.add_argument("--output", required=True, help="output TIFF")
    parser.add_argument("--labels", action="store_true", help="nearest-neighbour resampling (instance or mask labels)")
    parser.add_argument("--slices", default=None, help="slices to keep, e.g. 120-164 (default: all)")
    args = parser.parse_args(argv)
    if not 0.05 <= args.factor <= 20:
        fail(f"--factor {args.factor}: out of range; pass a scale between 0.05 and 20, e.g. 0.5")
    from bundle.data.io import read_volume, select_slices, write_tiff
    from bundle.data.pixel_size import resample_volume
    from bundle.outputs import check_output_dir

    try:
        volume = select_slices(read_volume(args.input), args.slices, path="--slices")
        check_output_dir(Path(args.output).parent)
    except InputError as err:
        fail(str(err))
    out = resample_volume(volume, (args.factor, args.factor), labels=args.labels)
    write_tiff(args.output, out)
    print(f"mitoda: wrote {args.output}: {volume.shape} -> {out.shape}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where to click next: rank the instances an adapted model is least sure about and write the top k as points.

Example:
    python scripts/suggest_clicks.py --image ../shared/data/epfl_hippocampus/training.tif \
        --points ../shared/data/epfl_hippocampus/points/15pct_split1.csv --slices 0-119:3 --k 40 \
        --output suggestions.csv [--checkpoint models/model.pt] [--per-slice 1] [--format napari|zyx]

The model runs slice by slice with configs/inference.yaml's network and sliding window; the scores are those of
bundle/pseudo_labels/suggest.py (docs/methods.md, "Where to click next"). --slices takes '0-119', '0,5,7-9' or
'A-B:S' (every S-th slice of A-B: '0-119:3' are the slices configs/finetune.yaml adapts on); written z values are
slice indices of --image. The CSV is a napari Points layer (index,axis-0,axis-1,axis-2) or ours (z,y,x), best first.
Bad input prints one line 'mitoda: error: ...' on stderr, exits with code 2 and writes no file.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


from bundle.errors import OneLineParser as _Parser, fail as _fail  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = _Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True, help="EM volume (multi-page TIFF, slice folder, NIfTI, HDF5)")
    parser.add_argument("--points", required=True, help="points clicked so far (CSV: z,y,x or a napari export)")
    parser.add_argument("--checkpoint", default=str(REPO / "models" / "model.pt"), help="default models/model.pt")
    parser.add_argument("--slices", default=None, help="slices to rank, e.g. '0-119' or '0-119:3' (default: all)")
    parser.add_argument("--k", type=int, default=20, help="number of suggestions (default 20)")
    parser.add_argument("--per-slice", type=int, default=None, help="at most this many per slice (default: spread)")
    parser.add_argument("--format", choices=("napari", "zyx"), default="napari", help="CSV layout (default napari)")
    parser.add_argument("--output", required=True, help="CSV file to write")
    return parser


def load_predictor(checkpoint: str | os.PathLike):
    """configs/inference.yaml's predictor (network with `checkpoint`, sliding-window inferer, device)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    with contextlib.chdir(REPO):  # the config names configs/train.yaml relative to the repository root
        parser.read_config("configs/inference.yaml")
        parser["checkpoint"] = str(Path(checkpoint).expanduser().resolve())
        return parser.get_parsed_content("predictor")


def suggest(image: str | os.PathLike, clicked, predictor, slices: list[int], k: int, per_slice: int | None = None):
    """Predict `slices` of `image` one by one and return the k best `Suggestion`s (z = slice index of `image`)."""
    from tqdm import tqdm

    from bundle.data.dataset import normalize_slice
    from bundle.data.io import SliceVolume
    from bundle.data.points import points_on_slice
    from bundle.inference import predict_slice
    from bundle.pseudo_labels.suggest import rank_suggestions, slice_candidates

    candidates = []
    with SliceVolume(image) as volume:
        for z in tqdm(slices, desc=f"suggest {volume.path.name}", unit="slice"):
            image_z = normalize_slice(volume[z], image, z)
            probability, density = predict_slice(predictor.network, predictor.inferer, image_z, predictor.device)
            candidates += slice_candidates(probability, density, points_on_slice(clicked, z), z=z)
    return rank_suggestions(candidates, k, per_slice) if candidates else []


def main(argv: list[str] | None = None) -> int:
    """Run the tool; return the exit code."""
    args = _parser().parse_args(argv)
    if args.k < 1:
        _fail(f"--k {args.k} is not a number of suggestions >= 1; pass e.g. 20")
    if args.per_slice is not None and args.per_slice < 1:
        _fail(f"--per-slice {args.per_slice} is not >= 1; pass e.g. 1, or leave it out to spread over the slices")
    output = Path(args.output).expanduser()
    if output.is_dir():
        _fail(f"{output}: is a folder; pass the name of the CSV file to write")

    from bundle.data.io import SliceVolume, parse_slices
    from bundle.data.points import read_points, validate_points, write_points
    from bundle.errors import find_input_error
    from bundle.pseudo_labels.suggest import suggestion_points

    try:
        with SliceVolume(args.image) as volume:
            shape = volume.shape
        clicked = read_points(args.points)
        validate_points(clicked, shape, path=args.points)
        slices = parse_slices(args.slices, int(shape[0]), "--slices")
        predictor = load_predictor(args.checkpoint)
        top = suggest(args.image, clicked, predictor, slices, args.k, args.per_slice)
    except Exception as exc:  # an InputError, possibly wrapped by MONAI's config parser (a bad checkpoint)
        error = find_input_error(exc)
        if error is None:
            raise
        _fail(str(error))
    if not top:
        _fail(f"{args.image}: no candidate on {len(slices)} slices (every component holds a point or has a detection "
              "mass < 0.5); pass other --slices")
    try:
        write_points(output, suggestion_points(top), napari=args.format == "napari")
    except OSError as exc:
        _fail(f"{output}: cannot be written ({exc.strerror or exc}); check the folder exists and is writable")
    print("rank z y x kind score margin mass area")
    for rank, s in enumerate(top, start=1):
        print(f"{rank} {s.z} {s.y} {s.x} {s.kind} {s.score:.3f} {s.margin:.3f} {s.mass:.2f} {s.area}")
    used = len({s.z for s in top})
    print(f"wrote {len(top)} suggestions on {used} of {len(slices)} slices to {output} ({args.format})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Score every pseudo-label round of an adaptation run against the true labels of its target slices.

    python scripts/pseudo_label_quality.py runs/wda_15pct_split1 [--slices "0-119:3"] [--label ../shared/data/epfl_hippocampus/training_instances.tif]
        [--snap] [--profile] [--image ../shared/data/epfl_hippocampus/training.tif] [--pixel_size NM]
    python scripts/pseudo_label_quality.py --profile --label ../shared/data/fafb/instances.tif --image ../shared/data/fafb/image.tif --slices 0-3

Per round: foreground precision / recall of the pseudo-labels (recall over all true foreground pixels), the
share of true foreground labelled background, background purity, ignored share, and how many pseudo-points
fall on a true instance. Slices: the target slices of the run ("0-119:3" = every 3rd of 0-119, the CPU recipe).
With --snap, also what `snap_to_membranes` would have made of each round's labels (a check of the rule on a run
made without it): foreground precision / recall after it, the pixels it turns into background and the share of
them that is truly background. With --pixel_size (as given to the fine-tune), the labels and the image are first
resampled to the model's scale, where the run's pseudo-labels are (nearest for the labels). With --profile, first the mean z-scored intensity across the *true* outlines of
those slices (`membrane_profile` on the labels, −8 … +8 px, negative inside): where the labels draw the outline
against the membrane's darkest ring, the convention `outline_margin` follows.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bundle.data.dataset import normalize_slice  # noqa: E402
from bundle.data.io import check_same_shape, parse_slices, read_label_instances, read_volume  # noqa: E402
from bundle.data.pixel_size import model_scale, resample_volume  # noqa: E402
from bundle.errors import InputError, install_excepthook  # noqa: E402
from bundle.handlers.pseudo_label_rounds import read_pseudo_points  # noqa: E402
from bundle.pseudo_labels import snap_to_membranes  # noqa: E402
from bundle.pseudo_labels.rounds import PROFILE_RADIUS, membrane_profile  # noqa: E402


def round_quality(labels: np.ndarray, truth: np.ndarray, points: np.ndarray) -> dict[str, float]:
    """Quality figures of one round's (Z, Y, X) pseudo-labels (0/1/255) against (Z, Y, X) instance ids."""
    foreground, background, true_fg = labels == 1, labels == 0, truth > 0
    on_instance = truth[points[:, 0], points[:, 1], points[:, 2]] > 0 if len(points) else np.zeros(0, bool)
    return {
        "fg_precision": float((foreground & true_fg).sum() / max(foreground.sum(), 1)),
        "fg_recall": float((foreground & true_fg).sum() / max(true_fg.sum(), 1)),
        "true_fg_as_bg": float((background & true_fg).sum() / max(true_fg.sum(), 1)),
        "bg_purity": float((background & ~true_fg).sum() / max(background.sum(), 1)),
        "ignored": float((labels == 255).mean()),
        "pseudo_points": int(len(points)),
        "points_on_instances": float(on_instance.mean()) if len(points) else float("nan"),
    }


def snap_quality(labels: np.ndarray, image: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Quality of `snap_to_membranes` applied to each slice of (Z, Y, X) `labels` with its `image` slice."""
    snapped = np.stack([snap_to_membranes(label, slice_) for label, slice_ in zip(labels, image)])
    foreground, true_fg, cut = snapped == 1, truth > 0, (labels == 1) & (snapped == 0)
    return {
        "snapped_fg_precision": float((foreground & true_fg).sum() / max(foreground.sum(), 1)),
        "snapped_fg_recall": float((foreground & true_fg).sum() / max(true_fg.sum(), 1)),
        "cut_to_bg_kpx": float(cut.sum() / 1e3),
        "cut_truly_bg": float((cut & ~true_fg).sum() / max(cut.sum(), 1)),
    }


def truth_profile(image: np.ndarray, truth: np.ndarray) -> dict[int, float]:
    """Mean z-scored intensity of (Z, Y, X) `image` at each signed distance from the outlines of (Z, Y, X) instance
    ids `truth` (negative inside)."""
    images = [normalize_slice(slice_) for slice_ in image]
    profile = membrane_profile(images, [(s > 0).astype(np.uint8) for s in truth])
    return {d: float(v) for d, v in zip(range(-PROFILE_RADIUS, PROFILE_RADIUS + 1), profile)}


def main() -> None:
    """Print one line of quality figures per round of the run's pseudo_labels folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, nargs="?", help="an adaptation run's output_dir (omit: --profile only)")
    parser.add_argument("--label", default="../shared/data/epfl_hippocampus/training_instances.tif")
    parser.add_argument("--slices", default="0-119:3", help="target slices of the run; 'A-B:S' = every S-th of A-B")
    parser.add_argument("--snap", action="store_true", help="also score snap_to_membranes on each round's labels")
    parser.add_argument("--profile", action="store_true", help="also print the intensity across the true outlines")
    parser.add_argument("--image", default="../shared/data/epfl_hippocampus/training.tif",
                        help="EM volume (--snap, --profile)")  # fmt: skip
    parser.add_argument("--pixel_size", default=None, help="nm per pixel of the target, as given to the fine-tune")
    args = parser.parse_args()
    if args.run_dir is None and not args.profile:
        raise InputError("run_dir: missing; pass the output_dir of an adaptation run (or --profile alone)")
    rounds = [] if args.run_dir is None else sorted((args.run_dir / "pseudo_labels").glob("round_*"),
                                                    key=lambda p: int(p.name.split("_")[1]))  # fmt: skip
    if args.run_dir is not None and not rounds:
        raise InputError(f"{args.run_dir / 'pseudo_labels'}: no round_N folders; pass the output_dir of an adaptation run")
    factors = None if args.pixel_size is None else model_scale(args.label, args.pixel_size)  # checked before any read
    truth = read_label_instances(args.label)
    image = read_volume(args.image) if args.snap or args.profile else None
    if image is not None:
        check_same_shape(image, truth, args.image, args.label)
    selected = parse_slices(args.slices, len(truth), path=args.label)
    truth = truth[selected]
    image = image[selected].astype(np.float32) if image is not None else None
    if factors is not None:
        truth = resample_volume(truth, factors, labels=True)
        image = resample_volume(image, factors) if image is not None else None
    print(f"true instances: {sum(len(np.unique(s[s > 0])) for s in truth)} on {len(truth)} slices (2D, per slice)")
    if args.profile:
        profile = truth_profile(image, truth)
        darkest = min(profile, key=profile.get)
        print("intensity across the true outlines (px: z-score):", " ".join(f"{d}: {v:.2f}" for d, v in profile.items()))
        print(f"darkest ring at {darkest:+d} px ({profile[darkest]:.2f}); negative: inside the labelled outline")
    for path in rounds:
        labels = read_volume(path / "labels.tif")
        if labels.shape != truth.shape:
            raise InputError(f"{path / 'labels.tif'}: shape {labels.shape} differs from the selected labels {truth.shape}; pass the run's --slices (and --pixel_size)")
        figures = round_quality(labels, truth, read_pseudo_points(path / "pseudo_points.csv"))
        if image is not None:
            figures.update(snap_quality(labels, image, truth))
        print(path.name, " ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()))


if __name__ == "__main__":
    install_excepthook()
    main()

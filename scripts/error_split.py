"""Where a prediction's pixel errors are: outline vs look-alike false positives, partial vs missed objects.

    python scripts/error_split.py runs/wda_v2/predictions [--label ../shared/data/epfl_hippocampus/training_instances.tif]
        [--slices 120-164]

Reads PRED's probability and density (configs/inference.yaml's outputs, TIFF or OME-Zarr, the predicted slices in order)
and prints: Dice at foreground thresholds 0.5-0.9; Dice after eroding the foreground by 1-3 px (an outline
systematically too wide gains, a right one loses); at 0.5, false positives in components that touch a true
mitochondrion (outline) or not (look-alikes), and how far outline ones lie from the truth; false negatives in
instances the prediction touches (partial; of them, those within 2 px of the predicted foreground, a rim at the
outline, and those beyond 5 px, chunks the prediction misses) or not (missed); and, for the components of p >= 0.7 (IPL's), the
density mass of look-alikes vs true ones (what `unsupported_background_mass` could remove).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402
from skimage.measure import label as connected_components  # noqa: E402

from bundle.data.io import parse_slices, read_label_instances  # noqa: E402
from bundle.errors import OneLineParser, fail  # noqa: E402
from bundle.inference.prediction_folder import read_prediction  # noqa: E402
from bundle.pseudo_labels.peaks import component_masses as density_masses  # noqa: E402


def dice(mask: np.ndarray, truth: np.ndarray) -> float:
    """Pooled Dice of two bool volumes."""
    return float(2 * (mask & truth).sum() / max(mask.sum() + truth.sum(), 1))


def error_split(probability: np.ndarray, instances: np.ndarray, radii: tuple[int, ...] = (1, 2, 3, 5, 10)) -> dict:
    """Pixel counts of the error kinds of a (Z, Y, X) probability at 0.5 against (Z, Y, X) instance ids."""
    truth, mask = instances > 0, probability >= 0.5
    out = {"tp": int((mask & truth).sum()), "fp_outline": 0, "fp_lookalike": 0, "fn_partial": 0, "fn_missed": 0}
    out.update({f"fp_within_{r}px": 0 for r in radii})
    out.update({"fn_partial_rim_2px": 0, "fn_partial_beyond_5px": 0})
    for z in range(len(mask)):
        components = connected_components(mask[z], connectivity=1)
        touching = np.isin(components, np.unique(components[truth[z]]))  # label 0 is background: never counted
        false_positive = mask[z] & ~truth[z]
        out["fp_outline"] += int((false_positive & touching & (components > 0)).sum())
        out["fp_lookalike"] += int((false_positive & ~touching).sum())
        distance = ndimage.distance_transform_edt(~truth[z])
        for r in radii:
            out[f"fp_within_{r}px"] += int((false_positive & (distance <= r)).sum())
        hit = np.isin(instances[z], np.unique(instances[z][mask[z]]))
        partial = truth[z] & ~mask[z] & hit
        out["fn_partial"] += int(partial.sum())
        from_prediction = ndimage.distance_transform_edt(~mask[z])  # a rim at the outline vs missed chunks
        out["fn_partial_rim_2px"] += int((partial & (from_prediction <= 2)).sum())
        out["fn_partial_beyond_5px"] += int((partial & (from_prediction > 5)).sum())
        out["fn_missed"] += int((truth[z] & ~hit).sum())
    return out


def dice_after_erosion(mask: np.ndarray, truth: np.ndarray, pixels: tuple[int, ...] = (1, 2, 3)) -> dict[int, float]:
    """Pooled Dice after eroding each slice's foreground by k px (4-connected steps): how wide the outline is."""
    return {k: dice(np.stack([ndimage.binary_erosion(s, iterations=k) for s in mask]), truth) for k in pixels}


def component_masses(probability: np.ndarray, density: np.ndarray, truth: np.ndarray, threshold: float = 0.7):
    """(mass, size, is_true) of every component of p >= threshold; true = over half its pixels are mitochondrion."""
    rows = []
    for z in range(len(probability)):
        components = connected_components(probability[z] >= threshold, connectivity=1)
        ids = np.arange(1, components.max() + 1)
        if not len(ids):
            continue
        mass = density_masses(density[z], components, ids)
        size = ndimage.sum_labels(np.ones_like(components), components, ids)
        overlap = ndimage.sum_labels(truth[z], components, ids) / size
        rows += list(zip(mass, size, overlap > 0.5))
    return np.array(rows, dtype=float).reshape(-1, 3)


def main() -> None:
    """Print the error split of one prediction folder."""
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("prediction_dir", type=Path)
    parser.add_argument("--label", default="../shared/data/epfl_hippocampus/training_instances.tif")
    parser.add_argument("--slices", default="120-164", help="the predicted slices of the label volume")
    args = parser.parse_args()
    probability = read_prediction(args.prediction_dir, "probability")  # a missing one: one line naming it
    density = read_prediction(args.prediction_dir, "density")
    instances = read_label_instances(args.label)
    instances = instances[parse_slices(args.slices, len(instances), path=args.label)]
    if instances.shape != probability.shape:
        fail(f"{args.prediction_dir}: prediction {probability.shape} vs labels {instances.shape}; pass the predicted --slices")
    truth = instances > 0
    print("Dice by threshold:", ", ".join(f"{t}: {dice(probability >= t, truth):.4f}" for t in (0.5, 0.6, 0.7, 0.8, 0.9)))
    eroded = dice_after_erosion(probability >= 0.5, truth)
    print("Dice at 0.5 after eroding the foreground by k px (a diagnostic, not a post-processing):",
          ", ".join(f"{k}: {v:.4f}" for k, v in eroded.items()))  # fmt: skip
    split = error_split(probability, instances)
    print("pixels at p >= 0.5:", ", ".join(f"{k} {v / 1e3:.0f} k" for k, v in split.items()))
    rows = component_masses(probability, density, truth)
    lookalike, true = rows[rows[:, 2] == 0], rows[rows[:, 2] == 1]
    print(f"components of p >= 0.7: {len(lookalike)} look-alikes ({lookalike[:, 1].sum() / 1e3:.0f} k px), "
          f"{len(true)} true ({true[:, 1].sum() / 1e3:.0f} k px)")  # fmt: skip
    for cut in (0.1, 0.3, 0.5):
        print(f"  density mass < {cut}: look-alike px {lookalike[lookalike[:, 0] < cut, 1].sum() / 1e3:.0f} k, "
              f"true px {true[true[:, 0] < cut, 1].sum() / 1e3:.1f} k ({int((true[:, 0] < cut).sum())} true components)")  # fmt: skip


if __name__ == "__main__":
    main()

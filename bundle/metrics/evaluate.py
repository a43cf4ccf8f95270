"""Score a prediction folder (probability and instances, TIFF or OME-Zarr) against instance labels into metrics.json
(+ overlays)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from bundle.data.io import parse_slices, read_label_instances, read_volume
from bundle.errors import InputError
from bundle.inference.prediction_folder import prediction_path, read_prediction, require_predictions
from bundle.metrics.instance import instance_scores
from bundle.metrics.instance_ap import prediction_dir_ap
from bundle.metrics.overlay import FN_COLOUR, FP_COLOUR, TP_COLOUR, error_overlay, with_legend
from bundle.metrics.segmentation import slice_and_volume_scores
from bundle.outputs import atomic_output, check_output_dir, claim_output_dir

METRIC_KEYS = ("dice", "iou", "f1", "mcc", "map", "aji", "pq", "ap50", "ap75")  # ap50/ap75: only with instances_3d.tif
DEFAULT_OVERLAY_SLICES = (0, 22, 44)  # first, middle and last of EPFL 120-164


def score_volume(probability: np.ndarray, instances: np.ndarray, label: np.ndarray, threshold: float = 0.5) -> dict:
    """All metrics of a (Z, Y, X) prediction: slice means at the top level, pooled-volume and per-slice values below."""
    pixel = slice_and_volume_scores(probability >= threshold, label > 0, probability)
    instance = instance_scores(instances, label)
    return {
        **pixel["slice_mean"],
        **instance["slice_mean"],
        "volume": pixel["volume"],
        "per_slice": {**pixel["per_slice"], **instance["per_slice"]},
        "num_slices": int(len(label)),
        "threshold": threshold,
    }


def _matching_slices(label: np.ndarray, depth: int, slices: str | Sequence[int] | None, label_path: str) -> np.ndarray:
    """Label slices that correspond to a prediction of `depth` slices (the selection applies to the label volume)."""
    if slices is None:
        selected = label
    else:
        selected = label[parse_slices(slices, len(label), path=label_path)]
        if depth == len(label) and depth != len(selected):
            raise InputError(
                f"{label_path}: prediction covers the whole volume ({depth} slices) but slices={slices!r} was given; "
                "predict with the same --slices or drop --slices here"
            )
    if len(selected) != depth:
        raise InputError(
            f"{label_path}: {len(selected)} label slices (slices={slices!r}) but the prediction has {depth}; "
            "pass --slices with the range that was predicted"
        )
    return selected


def overlay_indices(overlay_slices: Sequence[int] | None, depth: int, where: str = "overlay_slices") -> list[int]:
    """Sorted unique scored-slice indices to draw (those >= `depth` dropped); negative or non-integers: InputError."""
    items = list(overlay_slices or [])
    if not all(isinstance(i, (int, np.integer)) and not isinstance(i, (bool, np.bool_)) and i >= 0 for i in items):
        raise InputError(
            f"{where}: overlay_slices={items!r} must be non-negative slice indices; pass e.g. [0, 22, 44] or [] for none"
        )
    return sorted({int(i) for i in items if i < depth})


def _overlay_image(
    image: str | os.PathLike, label_volume: np.ndarray, label: str | os.PathLike, slices: str | Sequence[int] | None
) -> np.ndarray:
    """The slices `slices` of the EM `image`, which must have the shape of the whole label volume and finite values."""
    volume = read_volume(image)
    if volume.shape != label_volume.shape:
        raise InputError(
            f"{image}: image shape {volume.shape} differs from the shape {label_volume.shape} of the label {label}; "
            "pass --image with the EM volume the labels belong to, or --overlay_slices [] for no overlays"
        )
    if not np.all(np.isfinite(volume)):
        raise InputError(f"{image}: image contains NaN or infinite values; replace them before drawing overlays")
    return volume[parse_slices(slices, len(volume), path=str(image))]


def evaluate_predictions(
    prediction_dir: str | os.PathLike,
    label: str | os.PathLike,
    output_dir: str | os.PathLike,
    slices: str | Sequence[int] | None = None,
    threshold: float = 0.5,
    mask_threshold: int = 127,
    image: str | os.PathLike | None = None,
    overlay_slices: Sequence[int] | None = DEFAULT_OVERLAY_SLICES,
) -> dict:
    """Score `prediction_dir` against `label` (slices `slices` of it) into output_dir/metrics.json.

    With `image` (the EM volume of the labels), also write output_dir/overlay_zNNN.png for each scored-slice index NNN
    in `overlay_slices` (indices past the last scored slice are dropped; [] or None: no overlays): the image in grey,
    true positives green, false positives red, false negatives blue, at `threshold`, under a legend with the label
    slice's number and its Dice. Everything is checked first.
    """
    prediction_dir, output_dir = Path(prediction_dir), Path(output_dir)
    require_predictions(prediction_dir, ("probability", "instances"))
    check_output_dir(output_dir, ["metrics.json"])
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
        raise InputError(f"threshold: {threshold!r} is not a probability threshold; pass a value between 0 and 1, e.g. 0.5")
    probability = read_prediction(prediction_dir, "probability")
    low, high = float(probability.min()), float(probability.max())
    if low < 0 or high > 1:
        raise InputError(f"{prediction_path(prediction_dir, 'probability')}: values in [{low:g}, {high:g}] are not "
                         "probabilities; pass the probability that configs/inference.yaml wrote")  # fmt: skip
    instances = read_prediction(prediction_dir, "instances")
    label_volume = read_label_instances(label, threshold=mask_threshold)
    labels = _matching_slices(label_volume, len(probability), slices, str(label))
    if probability.shape != labels.shape or instances.shape != labels.shape:
        raise InputError(
            f"{prediction_dir}: prediction shape {probability.shape} does not match label {label} shape {labels.shape}; "
            "score a prediction of the same volume"
        )
    drawn = overlay_indices(overlay_slices, len(labels))
    if drawn and image is None:
        raise InputError(
            f"{output_dir}: overlay_slices={list(overlay_slices or [])} needs the EM image; "
            "pass --image IMAGE or --overlay_slices []"
        )
    volume = _overlay_image(image, label_volume, label, slices) if drawn else None
    scores = score_volume(probability.astype(np.float32), instances, labels, threshold)
    scores.update(prediction_dir_ap(prediction_dir, labels, probability))  # 3D AP50/AP75 when instances_3d.tif exists
    scores.update(prediction_dir=str(prediction_dir), label=str(label), slices=slices)
    numbers = parse_slices(slices, len(label_volume), path=str(label))  # the label slice of each scored slice
    overlays = {z: with_legend(error_overlay(volume[z], probability[z] >= threshold, labels[z] > 0), [
        [(None, f"{Path(label).name}  slice {numbers[z]}"), (None, f"Dice {scores['per_slice']['dice'][z]:.3f}")],
        [(TP_COLOUR, "found"), (FP_COLOUR, "false positive"), (FN_COLOUR, "missed")]]) for z in drawn}  # fmt: skip
    written = ["metrics.json", *(f"overlay_z{z:03d}.png" for z in overlays)]
    claim_output_dir(output_dir, written, stale=["overlay_z*.png"])  # an earlier run's other overlays: removed
    for z, rgb in overlays.items():
        with atomic_output(output_dir / f"overlay_z{z:03d}.png") as partial:
            iio.imwrite(partial, rgb, extension=".png")
    with atomic_output(output_dir / "metrics.json") as partial:
        partial.write_text(json.dumps(scores, indent=2) + "\n")
    return scores


SUMMARY_KEYS = ("dice", "iou", "aji", "pq")


def read_scores(scores_dir: str | os.PathLike) -> dict:
    """The metrics.json that `evaluate_predictions` wrote into `scores_dir` (one-line InputError when missing)."""
    path = Path(scores_dir) / "metrics.json"
    if not path.is_file():
        raise InputError(f"{path}: scores not found; run configs/evaluate.yaml with --output_dir {scores_dir}")
    return json.loads(path.read_text())


def score_table(rows: dict[str, dict], keys: Sequence[str] = SUMMARY_KEYS) -> str:
    """A Markdown table of `rows` ({name: metrics}); every row after the first also shows its change against it."""
    names = list(rows)
    lines = ["| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name in names:
        cells = []
        for key in keys:
            value, first = rows[name][key], rows[names[0]][key]
            cells.append(f"{value:.3f}" if name == names[0] else f"{value:.3f} ({value - first:+.3f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)

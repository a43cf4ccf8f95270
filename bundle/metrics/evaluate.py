"""Score a prediction folder (probability.tif, instances.tif) against instance labels into metrics.json."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bundle.data.io import atomic_output, parse_slices, read_label_instances, read_volume
from bundle.errors import InputError
from bundle.metrics.instance import instance_scores
from bundle.metrics.segmentation import slice_and_volume_scores

METRIC_KEYS = ("dice", "iou", "f1", "mcc", "map", "aji", "pq")


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


def evaluate_predictions(
    prediction_dir: str | os.PathLike,
    label: str | os.PathLike,
    output_dir: str | os.PathLike,
    slices: str | Sequence[int] | None = None,
    threshold: float = 0.5,
    mask_threshold: int = 127,
) -> dict:
    """Read `prediction_dir`, score it against `label` (slices `slices` of it), write output_dir/metrics.json."""
    prediction_dir, output_dir = Path(prediction_dir), Path(output_dir)
    for name in ("probability.tif", "instances.tif"):
        if not (prediction_dir / name).is_file():
            raise InputError(f"{prediction_dir / name}: prediction file not found; run configs/inference.yaml with --output_dir {prediction_dir}")
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"{output_dir}: output_dir is a file; pass a folder path for metrics.json")
    probability = read_volume(prediction_dir / "probability.tif")
    instances = read_volume(prediction_dir / "instances.tif")
    labels = _matching_slices(read_label_instances(label, threshold=mask_threshold), len(probability), slices, str(label))
    if probability.shape != labels.shape or instances.shape != labels.shape:
        raise InputError(
            f"{prediction_dir}: prediction shape {probability.shape} does not match label {label} shape {labels.shape}; "
            "score a prediction of the same volume"
        )
    scores = score_volume(probability.astype(np.float32), instances, labels, threshold)
    scores.update(prediction_dir=str(prediction_dir), label=str(label), slices=slices)
    with atomic_output(output_dir / "metrics.json") as partial:
        partial.write_text(json.dumps(scores, indent=2) + "\n")
    return scores

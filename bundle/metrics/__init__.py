"""Pixel-level and instance-level segmentation metrics."""

from __future__ import annotations

from bundle.metrics.instance import aggregated_jaccard_index, instance_scores, panoptic_quality
from bundle.metrics.segmentation import (
    average_precision,
    binary_scores,
    confusion_counts,
    dice_from_counts,
    f1_from_counts,
    iou_from_counts,
    mcc_from_counts,
    slice_and_volume_scores,
)

__all__ = [
    "aggregated_jaccard_index",
    "average_precision",
    "binary_scores",
    "confusion_counts",
    "dice_from_counts",
    "f1_from_counts",
    "instance_scores",
    "iou_from_counts",
    "mcc_from_counts",
    "panoptic_quality",
    "slice_and_volume_scores",
]

"""Pseudo-labels for self-training: density peaks (detection), IPL / threshold / entropy (segmentation), TTA."""

from bundle.pseudo_labels.peaks import (
    confident_peaks,
    density_background_mask,
    estimate_count,
    find_peaks,
    select_new_peaks,
)
from bundle.pseudo_labels.selection import (
    PSEUDO_LABEL_KINDS,
    add_point_labels,
    binary_entropy,
    entropy_pseudo_label,
    instance_aware_pseudo_label,
    instances_with_points,
    pseudo_label,
    threshold_pseudo_label,
)
from bundle.pseudo_labels.tta import TTA_VIEWS, tta_predict

__all__ = [
    "PSEUDO_LABEL_KINDS",
    "TTA_VIEWS",
    "add_point_labels",
    "binary_entropy",
    "confident_peaks",
    "density_background_mask",
    "entropy_pseudo_label",
    "estimate_count",
    "find_peaks",
    "instance_aware_pseudo_label",
    "instances_with_points",
    "pseudo_label",
    "select_new_peaks",
    "threshold_pseudo_label",
    "tta_predict",
]

"""Pseudo-labels for self-training: density peaks (detection), IPL / threshold / entropy (segmentation), TTA;
click suggestions (where to click next)."""

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
    snap_to_membranes,
    threshold_pseudo_label,
)
from bundle.pseudo_labels.suggest import Suggestion, rank_suggestions, slice_candidates, suggestion_points
from bundle.pseudo_labels.tta import TTA_VIEWS, tta_predict

__all__ = [
    "PSEUDO_LABEL_KINDS",
    "Suggestion",
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
    "rank_suggestions",
    "select_new_peaks",
    "slice_candidates",
    "snap_to_membranes",
    "suggestion_points",
    "threshold_pseudo_label",
    "tta_predict",
]

"""Instance-level metrics (AJI, PQ) on 2D instance maps, applied slice by slice to volumes."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment

from bundle.metrics.segmentation import _check_same_shape


def _relabel(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Map instance ids to 1..n in increasing id order (0 stays background); return the flat int64 map and n."""
    flat = np.asarray(labels).ravel()
    if flat.size == 0:
        return flat.astype(np.int64), 0
    if flat.min() >= 0 and flat.max() < 4 * flat.size + 65536:
        # Non-negative, moderate ids: an O(n) bincount lookup, several times faster than np.unique.
        index = flat.astype(np.intp, copy=False)
        foreground = np.bincount(index).astype(bool)
        foreground[0] = False
    else:
        ids = np.unique(flat)
        index = np.searchsorted(ids, flat)
        foreground = ids != 0
    lut = np.cumsum(foreground, dtype=np.int64) * foreground
    return lut[index], int(foreground.sum())


class _Overlaps(NamedTuple):
    """Instance counts, areas (index = relabelled id, 0 = background) and one entry per overlapping pair."""

    n_pred: int
    n_gt: int
    area_pred: np.ndarray
    area_gt: np.ndarray
    rows: np.ndarray  # pred id (1..n_pred) of each overlapping pair, pairs sorted by (pred, gt)
    cols: np.ndarray  # gt id (1..n_gt)
    inter: np.ndarray  # |P ∩ G| > 0
    union: np.ndarray  # |P ∪ G|


def _overlaps(pred: np.ndarray, gt: np.ndarray) -> _Overlaps:
    """Relabel both 2D instance maps to 1..n and build the sparse (pred, gt) intersection table of AJI and PQ."""
    _check_same_shape(pred, gt)
    p, n_pred = _relabel(pred)
    g, n_gt = _relabel(gt)
    area_p = np.bincount(p, minlength=n_pred + 1)
    area_g = np.bincount(g, minlength=n_gt + 1)
    both = (p > 0) & (g > 0)
    codes, inter = np.unique(p[both] * (n_gt + 1) + g[both], return_counts=True)
    rows, cols = codes // (n_gt + 1), codes % (n_gt + 1)
    union = area_p[rows] + area_g[cols] - inter
    return _Overlaps(n_pred, n_gt, area_p, area_g, rows, cols, inter, union)


def _empty_score(n_pred: int, n_gt: int) -> float:
    """Score when a map has no instance: 1.0 if both are empty, 0.0 if only one is."""
    return 1.0 if n_pred == n_gt == 0 else 0.0


def aggregated_jaccard_index(pred: np.ndarray, gt: np.ndarray) -> float:
    """AJI (Kumar et al. 2017, HoVer-Net get_fast_aji) of 2D instance maps; 1.0 if both empty, 0.0 if one is."""
    n_pred, n_gt, area_p, area_g, rows, cols, inter, union = _overlaps(pred, gt)
    if n_pred == 0 or n_gt == 0:
        return _empty_score(n_pred, n_gt)
    if len(rows) == 0:  # no predicted instance touches a true one: nothing matched, all area is union
        return 0.0
    iou = inter / union
    # For each gt pick the overlapping pred of maximal IoU (ties: lowest pred label, like np.argmax).
    order = np.lexsort((rows, -iou, cols))
    cols_sorted = cols[order]
    first = order[np.r_[True, cols_sorted[1:] != cols_sorted[:-1]]]
    total_inter = int(inter[first].sum())
    total_union = int(union[first].sum())
    unmatched_gt = np.ones(n_gt + 1, dtype=bool)
    unmatched_gt[0] = False
    unmatched_gt[cols[first]] = False
    unused_pred = np.ones(n_pred + 1, dtype=bool)
    unused_pred[0] = False
    unused_pred[rows[first]] = False
    total_union += int(area_g[unmatched_gt].sum()) + int(area_p[unused_pred].sum())
    return total_inter / total_union


def panoptic_quality(pred: np.ndarray, gt: np.ndarray, match_iou: float = 0.5) -> float:
    """PQ = sum_TP IoU / (|TP| + |FP|/2 + |FN|/2), matching at IoU > match_iou (Kirillov); 1.0 if both empty."""
    if not 0.0 < match_iou <= 1.0:
        raise ValueError(f"match_iou must be in (0, 1], got {match_iou}")
    n_pred, n_gt, _, _, rows, cols, inter, union = _overlaps(pred, gt)
    if n_pred == 0 or n_gt == 0:
        return _empty_score(n_pred, n_gt)
    iou = inter / union
    if match_iou >= 0.5:
        # IoU > 1/2 means |P ∩ G| > |P ∪ G| / 2: each instance has at most one such partner, so no assignment.
        tp_iou = iou[iou > match_iou]
    else:
        # Pairs are not unique any more: max-IoU one-to-one assignment, then threshold (as MONAI's Munkres branch).
        dense = np.zeros((n_gt, n_pred))
        dense[cols - 1, rows - 1] = iou
        gt_idx, pred_idx = linear_sum_assignment(dense, maximize=True)
        tp_iou = dense[gt_idx, pred_idx]
        tp_iou = tp_iou[tp_iou > match_iou]
    tp = tp_iou.size
    return float(tp_iou.sum()) / (tp + 0.5 * (n_pred - tp) + 0.5 * (n_gt - tp))


def instance_scores(pred: np.ndarray, gt: np.ndarray) -> dict:
    """Per-slice AJI and PQ of (Z, Y, X) instance volumes (slices independent) and their plain means."""
    _check_same_shape(pred, gt)
    if np.ndim(gt) != 3:
        raise ValueError(f"expected (Z, Y, X) instance volumes, got shape {np.shape(gt)}")
    aji = [aggregated_jaccard_index(pred[z], gt[z]) for z in range(gt.shape[0])]
    pq = [panoptic_quality(pred[z], gt[z]) for z in range(gt.shape[0])]
    return {
        "slice_mean": {"aji": float(np.mean(aji)), "pq": float(np.mean(pq))},
        "per_slice": {"aji": aji, "pq": pq},
    }

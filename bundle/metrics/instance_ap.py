"""3D instance average precision (AP50, AP75) as in the MitoEM protocol (COCO-style AP on 3D instances)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from skimage.measure import label as connected_components

from bundle.data.io import read_volume
from bundle.errors import InputError
from bundle.inference.prediction_folder import LINKED, prediction_path
from bundle.metrics.instance import _overlaps, _relabel

RECALL_POINTS = np.linspace(0.0, 1.0, 101)  # COCO's 101 recall thresholds 0, 0.01, ..., 1


def _check_volumes(pred: np.ndarray, gt: np.ndarray, probability: np.ndarray | None) -> None:
    """Raise a one-line InputError unless pred, gt (and probability) are (Z, Y, X) arrays of one shape."""
    if np.ndim(gt) != 3:
        raise InputError(f"gt: instance labels have shape {np.shape(gt)}, not (Z, Y, X); pass a 3D label volume")
    for name, array in (("pred", pred), ("probability", probability)):
        if array is not None and np.shape(array) != np.shape(gt):
            raise InputError(f"{name}: shape {np.shape(array)} differs from gt shape {np.shape(gt)}; pass volumes of the same region")


def ap_from_matches(is_tp: np.ndarray, n_gt: int) -> float:
    """COCO 101-point interpolated AP of detections ranked best first (`is_tp` per detection) against `n_gt` objects."""
    if n_gt == 0:
        return float("nan")
    if is_tp.size == 0:
        return 0.0
    tp = np.cumsum(is_tp)
    recall = tp / n_gt
    precision = tp / np.arange(1, is_tp.size + 1)
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # envelope: best precision at any higher recall
    index = np.searchsorted(recall, RECALL_POINTS, side="left")  # first rank reaching each recall point
    reached = index < recall.size
    return float(np.sum(precision[index[reached]]) / RECALL_POINTS.size)


def instance_ap(
    pred: np.ndarray,
    gt: np.ndarray,
    probability: np.ndarray | None = None,
    iou_thresholds: Sequence[float] = (0.5, 0.75),
) -> dict[str, float]:
    """AP at each IoU threshold ({"ap50": ..., "ap75": ...}) of 3D instance volumes: COCO-style, greedy by score.

    Definition (MitoEM: Wei et al. 2020, COCO evaluation applied to 3D instances, without area ranges):
    IoU = |P ∩ G| / |P ∪ G| in voxels, from the sparse table of overlapping (pred, gt) id pairs. Predictions
    are ranked by score, highest first (mean `probability` inside the instance when given, else its voxel
    count; ties keep increasing id order). At threshold t each prediction in rank order takes the still
    unmatched ground-truth instance of highest IoU with IoU >= t (a true positive) or is a false positive.
    Precision is made monotone (p(r) = max precision at recall >= r) and AP is its mean at the 101 recall
    points 0, 0.01, ..., 1 (0 at points never reached). AP is NaN when gt has no instance, 0 when only pred is empty.
    """
    _check_volumes(pred, gt, probability)
    n_pred, n_gt, area_pred, _, rows, cols, inter, union = _overlaps(pred, gt)
    if probability is None:
        score = area_pred[1:].astype(np.float64)
    else:
        ids, _ = _relabel(pred)
        sums = np.bincount(ids, weights=np.asarray(probability, dtype=np.float64).ravel(), minlength=n_pred + 1)
        score = sums[1:] / np.maximum(area_pred[1:], 1)
    ranked = np.argsort(-score, kind="stable") + 1  # relabelled pred ids, best first
    rank_of = np.empty(n_pred + 1, dtype=np.int64)
    rank_of[ranked] = np.arange(n_pred)
    iou = inter / union
    out = {}
    for t in iou_thresholds:
        keep = iou >= t
        # candidate pairs in (pred rank, -IoU) order: each prediction tries its best gt first
        order = np.lexsort((-iou[keep], rank_of[rows[keep]]))
        pair_rank, pair_gt = rank_of[rows[keep]][order], cols[keep][order]
        is_tp = np.zeros(n_pred, dtype=bool)
        taken = np.zeros(n_gt + 1, dtype=bool)
        for rank, g in zip(pair_rank.tolist(), pair_gt.tolist()):
            if not is_tp[rank] and not taken[g]:
                is_tp[rank] = taken[g] = True
        out[f"ap{round(t * 100)}"] = ap_from_matches(is_tp, n_gt)
    return out


def gt_instances_3d(labels: np.ndarray) -> np.ndarray:
    """3D ground-truth instances: ids as they are when one id spans several slices, else 3D components of labels > 0.

    Masks and per-slice annotations (every id in one slice) have no 3D identity; their 6-connected components
    link them across z, as `instances_3d` does for predictions.
    """
    labels = np.asarray(labels)
    per_slice = [np.unique(labels[z][labels[z] > 0]) for z in range(labels.shape[0])]
    ids = np.concatenate(per_slice) if per_slice else np.zeros(0, labels.dtype)
    if np.unique(ids).size < ids.size:
        return labels
    return connected_components(labels > 0, connectivity=1)


def prediction_dir_ap(prediction_dir: str | os.PathLike, labels: np.ndarray, probability: np.ndarray | None = None) -> dict[str, float]:
    """{"ap50", "ap75"} of prediction_dir's instances_3d (TIFF or OME-Zarr) against (Z, Y, X) `labels`; {} when it is
    absent."""
    path = prediction_path(prediction_dir, LINKED)
    if not path.exists():
        return {}
    pred = read_volume(path)
    if pred.shape != np.shape(labels):
        raise InputError(f"{path}: shape {pred.shape} does not match the label shape {np.shape(labels)}; link the prediction of the scored slices again")
    return instance_ap(pred, gt_instances_3d(labels), probability)

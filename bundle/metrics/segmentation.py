"""Binary, pixel-level segmentation metrics (Dice, IoU, F1, MCC, AP) per slice and per volume."""

from __future__ import annotations

import math

import numpy as np

SCORE_KEYS: tuple[str, ...] = ("dice", "iou", "f1", "mcc", "map")


def _check_same_shape(a: np.ndarray, b: np.ndarray, name_a: str = "pred", name_b: str = "gt") -> None:
    """Raise ValueError naming both shapes if the two arrays differ in shape."""
    if np.shape(a) != np.shape(b):
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {np.shape(a)} and {np.shape(b)}")


def _check_volume(pred: np.ndarray, gt: np.ndarray, prob: np.ndarray | None) -> None:
    """Raise ValueError unless pred, gt (and prob) are (Z, Y, X) arrays of one shape."""
    _check_same_shape(pred, gt)
    if prob is not None:
        _check_same_shape(prob, gt, "prob", "gt")
    if np.ndim(gt) != 3:
        raise ValueError(f"expected (Z, Y, X) volumes, got shape {np.shape(gt)}")


def confusion_counts(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int, int]:
    """Return (tp, fp, fn, tn) of two boolean-castable arrays of equal shape."""
    _check_same_shape(pred, gt)
    p = np.asarray(pred).astype(bool, copy=False)
    g = np.asarray(gt).astype(bool, copy=False)
    tp = int(np.count_nonzero(p & g))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(g)) - tp
    tn = int(g.size) - tp - fp - fn
    return tp, fp, fn, tn


def dice_from_counts(tp: int, fp: int, fn: int, tn: int) -> float:
    """Dice = 2tp / (2tp + fp + fn); 1.0 when pred and gt are both empty (tp + fp + fn == 0)."""
    denom = 2 * tp + fp + fn
    return 1.0 if denom == 0 else float(2 * tp / denom)


def iou_from_counts(tp: int, fp: int, fn: int, tn: int) -> float:
    """IoU (Jaccard) = tp / (tp + fp + fn); 1.0 when pred and gt are both empty (tp + fp + fn == 0)."""
    denom = tp + fp + fn
    return 1.0 if denom == 0 else float(tp / denom)


def f1_from_counts(tp: int, fp: int, fn: int, tn: int) -> float:
    """2PR / (P + R) (equals Dice); 1.0 when both empty; a 0/0 precision or recall counts as 0 (then F1 = 0)."""
    if tp + fp + fn == 0:
        return 1.0
    precision = tp / (tp + fp) if tp + fp > 0 else 0.0
    recall = tp / (tp + fn) if tp + fn > 0 else 0.0
    if precision + recall == 0.0:
        return 0.0
    return float(2.0 * precision * recall / (precision + recall))


def mcc_from_counts(tp: int, fp: int, fn: int, tn: int) -> float:
    """Matthews correlation in float64; if its denominator is 0: 1.0 when fp == fn == 0 (pred equals gt), else 0.0."""
    tp_, fp_, fn_, tn_ = (np.float64(v) for v in (tp, fp, fn, tn))
    denom = math.sqrt((tp_ + fp_) * (tp_ + fn_) * (tn_ + fp_) * (tn_ + fn_))
    if denom == 0.0:
        return 1.0 if fp == 0 and fn == 0 else 0.0
    return float((tp_ * tn_ - fp_ * fn_) / denom)


def average_precision(prob: np.ndarray, gt: np.ndarray) -> float:
    """Step-wise (sklearn) AP of foreground scores vs binary gt, ties grouped; nan when gt has no positive."""
    _check_same_shape(prob, gt, "prob", "gt")
    scores = np.asarray(prob).ravel()
    if scores.dtype != np.float64:
        scores = scores.astype(np.float32, copy=False)
    positive = np.asarray(gt).ravel().astype(bool, copy=False)
    n_pos = int(np.count_nonzero(positive))
    if n_pos == 0:
        return float("nan")
    # AP = sum_n (R_n - R_{n-1}) P_n over distinct thresholds. A threshold with no positive at it adds
    # R_n - R_{n-1} = 0, so only distinct positive scores t matter: with tp(t) = #positives >= t and
    # k(t) = #pixels >= t, AP = sum_t (#positives == t) / n_pos * tp(t) / k(t). Two np.sort + searchsorted
    # give this exactly and are ~4x faster than an argsort over all pixels.
    all_sorted = np.sort(scores)
    pos_sorted = np.sort(scores[positive])
    thresholds, first = np.unique(pos_sorted, return_index=True)
    tp = n_pos - first  # positives with score >= threshold
    k = scores.size - np.searchsorted(all_sorted, thresholds, side="left")  # pixels with score >= threshold
    hits = np.diff(np.append(first, n_pos))  # positives with score == threshold
    return float(np.sum(hits * (tp / k)) / n_pos)


def _scores_from_counts(counts: tuple[int, int, int, int]) -> dict[str, float]:
    """Dice, IoU, F1 and MCC of one confusion table."""
    return {
        "dice": dice_from_counts(*counts),
        "iou": iou_from_counts(*counts),
        "f1": f1_from_counts(*counts),
        "mcc": mcc_from_counts(*counts),
    }


def binary_scores(pred: np.ndarray, gt: np.ndarray, prob: np.ndarray | None) -> dict[str, float]:
    """Dice, IoU, F1, MCC and AP ("map", nan if prob is None) of one slice or volume."""
    scores = _scores_from_counts(confusion_counts(pred, gt))
    scores["map"] = float("nan") if prob is None else average_precision(prob, gt)
    return scores


def _nanmean(values: list[float]) -> float:
    """Mean ignoring nan; nan (without a warning) when every value is nan or the list is empty."""
    arr = np.asarray(values, dtype=np.float64)
    finite = ~np.isnan(arr)
    return float(arr[finite].mean()) if finite.any() else float("nan")


def slice_and_volume_scores(pred: np.ndarray, gt: np.ndarray, prob: np.ndarray | None) -> dict:
    """Per-slice scores, their nanmean ("slice_mean") and pooled whole-volume scores of (Z, Y, X) arrays."""
    _check_volume(pred, gt, prob)
    pred, gt = np.asarray(pred), np.asarray(gt)
    prob = None if prob is None else np.asarray(prob)
    counts = [confusion_counts(pred[z], gt[z]) for z in range(gt.shape[0])]
    per_slice_dicts = [_scores_from_counts(c) for c in counts]
    per_slice: dict[str, list[float]] = {key: [s[key] for s in per_slice_dicts] for key in SCORE_KEYS[:-1]}
    if prob is None:
        per_slice["map"] = [float("nan")] * gt.shape[0]
    else:
        per_slice["map"] = [average_precision(prob[z], gt[z]) for z in range(gt.shape[0])]
    tp, fp, fn, tn = (sum(c[i] for c in counts) for i in range(4))  # pooled = sum of per-slice counts
    volume = _scores_from_counts((tp, fp, fn, tn))
    volume["map"] = float("nan") if prob is None else average_precision(prob, gt)
    slice_mean = {key: _nanmean(per_slice[key]) for key in SCORE_KEYS}
    return {"slice_mean": slice_mean, "volume": volume, "per_slice": per_slice}

"""Tests of bundle.metrics; every expected value is worked out by hand in the comments."""

from __future__ import annotations

import math
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import torch
from monai.metrics import compute_average_precision, compute_panoptic_quality

from bundle.metrics import (
    aggregated_jaccard_index,
    average_precision,
    binary_scores,
    confusion_counts,
    dice_from_counts,
    f1_from_counts,
    instance_scores,
    iou_from_counts,
    mcc_from_counts,
    panoptic_quality,
    slice_and_volume_scores,
)
from bundle.metrics.evaluate import evaluate_predictions
from bundle.metrics.overlay import (
    FP_COLOUR,
    LEGEND_LINE_PX,
    OUTLINE_COLOURS,
    TP_COLOUR,
    error_overlay,
    outline_overlay,
    scale_bar,
    with_legend,
)
from tests.helpers import raises_one_line

APPROX = 1e-6


def block(shape: tuple[int, int], rows: slice, cols: slice, value: int = 1) -> np.ndarray:
    """A 2D int map with `value` on rows x cols and 0 elsewhere."""
    out = np.zeros(shape, dtype=np.int64)
    out[rows, cols] = value
    return out


# ---------------------------------------------------------------------------------------------
# Degenerate cases
# ---------------------------------------------------------------------------------------------


def test_empty_prediction_nonempty_gt() -> None:
    """Empty pred vs a 2x2 gt block in a 4x4 image."""
    gt = block((4, 4), slice(0, 2), slice(0, 2))
    pred = np.zeros_like(gt)
    # tp = 0, fp = 0, fn = 4, tn = 16 - 4 = 12
    assert confusion_counts(pred, gt) == (0, 0, 4, 12)
    # prob all 0: a single threshold holding all 16 pixels, 4 of them positive -> P = 4/16, dR = 1 -> AP = 0.25
    scores = binary_scores(pred, gt, np.zeros(gt.shape, dtype=np.float32))
    # dice = 0/(0+0+4) = 0, iou = 0/4 = 0, f1: precision 0/0 -> 0, recall 0/4 = 0 -> 0
    # mcc: (tp+fp) = 0 -> denominator 0, fn = 4 != 0 -> 0.0
    assert scores == pytest.approx({"dice": 0.0, "iou": 0.0, "f1": 0.0, "mcc": 0.0, "map": 0.25})
    # AJI: one side empty -> 0. PQ: TP 0, FP 0, FN 1 -> 0 / (0 + 0 + 0.5) = 0
    assert aggregated_jaccard_index(pred, gt) == 0.0
    assert panoptic_quality(pred, gt) == 0.0


def test_empty_gt_nonempty_prediction() -> None:
    """A 2x2 pred block vs an empty gt in a 4x4 image."""
    pred = block((4, 4), slice(0, 2), slice(0, 2))
    gt = np.zeros_like(pred)
    # tp = 0, fp = 4, fn = 0, tn = 12
    assert confusion_counts(pred, gt) == (0, 4, 0, 12)
    scores = binary_scores(pred, gt, pred.astype(np.float32))
    # dice = 0/4 = 0, iou = 0, f1: precision 0/4 = 0, recall 0/0 -> 0 -> 0
    # mcc: (tp+fn) = 0 -> denominator 0, fp = 4 != 0 -> 0.0; AP: gt has no positive -> nan
    assert scores["dice"] == 0.0 and scores["iou"] == 0.0 and scores["f1"] == 0.0 and scores["mcc"] == 0.0
    assert math.isnan(scores["map"])
    # AJI: one side empty -> 0. PQ: TP 0, FP 1, FN 0 -> 0 / 0.5 = 0
    assert aggregated_jaccard_index(pred, gt) == 0.0
    assert panoptic_quality(pred, gt) == 0.0


def test_both_empty() -> None:
    """Empty pred and empty gt: every convention at once."""
    gt = np.zeros((4, 4), dtype=np.int64)
    pred = np.zeros_like(gt)
    # tp = fp = fn = 0, tn = 16
    assert confusion_counts(pred, gt) == (0, 0, 0, 16)
    scores = binary_scores(pred, gt, np.zeros(gt.shape, dtype=np.float32))
    # dice/iou/f1: tp+fp+fn == 0 -> 1.0; mcc: denominator 0 and fp == fn == 0 -> 1.0; AP: no positive -> nan
    assert scores["dice"] == 1.0 and scores["iou"] == 1.0 and scores["f1"] == 1.0 and scores["mcc"] == 1.0
    assert math.isnan(scores["map"])
    assert math.isnan(binary_scores(pred, gt, None)["map"])
    assert aggregated_jaccard_index(pred, gt) == 1.0
    assert panoptic_quality(pred, gt) == 1.0


def test_mcc_all_foreground_equal_is_one() -> None:
    """pred == gt == all foreground: tn + fp = 0 makes the MCC denominator 0, fp == fn == 0 -> 1.0."""
    assert mcc_from_counts(16, 0, 0, 0) == 1.0
    # all foreground pred vs half gt: tp 8, fp 8, fn 0, tn 0 -> (tn + fn) = 0, fp != 0 -> 0.0
    assert mcc_from_counts(8, 8, 0, 0) == 0.0


# ---------------------------------------------------------------------------------------------
# Pixel-level metrics
# ---------------------------------------------------------------------------------------------


def test_small_confusion_table() -> None:
    """pred = 11110000, gt = 11101000."""
    pred = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    gt = np.array([1, 1, 1, 0, 1, 0, 0, 0])
    # tp: positions 0,1,2 = 3; fp: position 3 = 1; fn: position 4 = 1; tn: positions 5,6,7 = 3
    counts = confusion_counts(pred, gt)
    assert counts == (3, 1, 1, 3)
    # mcc = (3*3 - 1*1) / sqrt((3+1)(3+1)(3+1)(3+1)) = 8 / 16 = 0.5
    assert mcc_from_counts(*counts) == pytest.approx(0.5, abs=APPROX)
    # dice = 6 / (6 + 1 + 1) = 0.75; iou = 3 / 5 = 0.6; f1: P = 3/4, R = 3/4 -> 0.75
    assert dice_from_counts(*counts) == pytest.approx(0.75, abs=APPROX)
    assert iou_from_counts(*counts) == pytest.approx(0.6, abs=APPROX)
    assert f1_from_counts(*counts) == pytest.approx(0.75, abs=APPROX)


def test_mcc_large_counts_no_overflow() -> None:
    """35M-voxel scale counts: the int64 product would overflow, float64 does not."""
    # num = 10M*15M - 5M*5M = 150e12 - 25e12 = 125e12
    # den = sqrt((10M+5M)(10M+5M)(15M+5M)(15M+5M)) = 15M * 20M = 300e12 -> mcc = 125/300 = 5/12
    assert mcc_from_counts(10_000_000, 5_000_000, 5_000_000, 15_000_000) == pytest.approx(5 / 12, abs=APPROX)
    # (2e7)^4 = 1.6e29 > int64 max; perfect prediction -> num = 4e14, den = sqrt(1.6e29) = 4e14 -> 1.0
    assert mcc_from_counts(20_000_000, 0, 0, 20_000_000) == pytest.approx(1.0, abs=APPROX)


@pytest.mark.parametrize("counts", [(3, 5, 1, 7), (3, 1, 1, 3), (0, 2, 3, 1), (1, 0, 0, 9), (250, 17, 93, 10_000)])
def test_f1_equals_dice(counts: tuple[int, int, int, int]) -> None:
    """F1 from precision/recall equals Dice (e.g. (3,5,1): dice 6/12 = 0.5, P 3/8, R 3/4 -> 2PR/(P+R) = 0.5)."""
    assert f1_from_counts(*counts) == pytest.approx(dice_from_counts(*counts), abs=1e-12)


def test_f1_hand_value() -> None:
    """tp 3, fp 5, fn 1: P = 3/8, R = 3/4, F1 = 2*(9/32)/(9/8) = 0.5 = dice 6/12."""
    assert f1_from_counts(3, 5, 1, 7) == pytest.approx(0.5, abs=APPROX)


def test_average_precision_hand_worked() -> None:
    """Five pixels with a tie at 0.8."""
    prob = np.array([0.9, 0.8, 0.8, 0.3, 0.1], dtype=np.float32)
    gt = np.array([1, 0, 1, 0, 1])
    # thresholds (3 positives):  >=0.9: 1 px, 1 pos -> P 1,   R 1/3
    #                           >=0.8: 3 px, 2 pos -> P 2/3, R 2/3 (tie grouped)
    #                           >=0.3: 4 px, 2 pos -> P 1/2, R 2/3 (dR = 0)
    #                           >=0.1: 5 px, 3 pos -> P 3/5, R 1
    # AP = 1/3*1 + 1/3*2/3 + 0 + 1/3*3/5 = 15/45 + 10/45 + 9/45 = 34/45
    assert average_precision(prob, gt) == pytest.approx(34 / 45, abs=APPROX)
    # perfect ranking -> 1.0; no positive -> nan
    assert average_precision(gt.astype(np.float32), gt) == pytest.approx(1.0, abs=APPROX)
    assert math.isnan(average_precision(prob, np.zeros(5)))


def test_average_precision_matches_monai() -> None:
    """Random scores with many ties (2 decimals) agree with monai.metrics.compute_average_precision."""
    rng = np.random.default_rng(0)
    for _ in range(5):
        prob = np.round(rng.random(2000), 2).astype(np.float32)
        gt = (rng.random(2000) < prob * 0.7).astype(np.int64)
        expected = float(compute_average_precision(torch.from_numpy(prob), torch.from_numpy(gt)))
        assert average_precision(prob.reshape(40, 50), gt.reshape(40, 50)) == pytest.approx(expected, abs=APPROX)


def test_slice_mean_differs_from_volume() -> None:
    """Slice 0: 1-px object predicted exactly; slice 1: 50-px object half predicted; slice 2: both empty."""
    gt = np.zeros((3, 10, 10), dtype=np.uint8)
    pred = np.zeros_like(gt)
    gt[0, 3, 3] = pred[0, 3, 3] = 1
    gt[1, 0:5, :] = 1  # 5 x 10 = 50 px
    pred[1, 0:5, 0:5] = 1  # 25 px, all inside gt
    prob = pred.astype(np.float32)
    out = slice_and_volume_scores(pred, gt, prob)
    # slice 0: tp 1 fp 0 fn 0 -> dice 1, iou 1; slice 1: tp 25 fp 0 fn 25 -> dice 50/75 = 2/3, iou 25/50 = 1/2
    # slice 2: both empty -> dice 1, iou 1 (convention), AP nan
    assert out["per_slice"]["dice"] == pytest.approx([1.0, 2 / 3, 1.0], abs=APPROX)
    assert out["per_slice"]["iou"] == pytest.approx([1.0, 0.5, 1.0], abs=APPROX)
    # slice mean dice = (1 + 2/3 + 1) / 3 = 8/9; iou = (1 + 1/2 + 1) / 3 = 5/6
    assert out["slice_mean"]["dice"] == pytest.approx(8 / 9, abs=APPROX)
    assert out["slice_mean"]["iou"] == pytest.approx(5 / 6, abs=APPROX)
    # volume: tp 26 fp 0 fn 25 -> dice 52/77, iou 26/51
    assert out["volume"]["dice"] == pytest.approx(52 / 77, abs=APPROX)
    assert out["volume"]["iou"] == pytest.approx(26 / 51, abs=APPROX)
    assert out["volume"]["f1"] == pytest.approx(52 / 77, abs=APPROX)
    # AP slice 0: 1 px at score 1, positive -> 1. Slice 1: >=1: 25 px all pos -> P 1, R 1/2;
    # >=0: 100 px, 50 pos -> P 1/2, dR 1/2 -> AP = 1/2 + 1/4 = 3/4. Slice 2: nan -> nanmean(1, 3/4) = 7/8
    assert out["per_slice"]["map"][:2] == pytest.approx([1.0, 0.75], abs=APPROX)
    assert math.isnan(out["per_slice"]["map"][2])
    assert out["slice_mean"]["map"] == pytest.approx(0.875, abs=APPROX)
    # volume AP: >=1: 26 px all pos -> P 1, R 26/51; >=0: 300 px, 51 pos -> P 51/300, dR 25/51
    # AP = 26/51 + 25/51 * 51/300 = 26/51 + 25/300
    assert out["volume"]["map"] == pytest.approx(26 / 51 + 25 / 300, abs=APPROX)
    # volume mcc: tp 26, fp 0, fn 25, tn 249 -> (26*249) / sqrt(26 * 51 * 249 * 274)
    assert out["volume"]["mcc"] == pytest.approx(26 * 249 / math.sqrt(26 * 51 * 249 * 274), abs=APPROX)
    # no prob -> map nan everywhere
    no_prob = slice_and_volume_scores(pred, gt, None)
    assert math.isnan(no_prob["slice_mean"]["map"]) and math.isnan(no_prob["volume"]["map"])
    assert no_prob["volume"]["dice"] == pytest.approx(52 / 77, abs=APPROX)


# ---------------------------------------------------------------------------------------------
# Instance-level metrics
# ---------------------------------------------------------------------------------------------


def split_case() -> tuple[np.ndarray, np.ndarray]:
    """One 2x5 gt object (10 px) split into a 2x3 (6 px, id 1) and a 2x2 (4 px, id 2) prediction."""
    gt = block((4, 6), slice(0, 2), slice(0, 5))
    pred = block((4, 6), slice(0, 2), slice(0, 3), 1) + block((4, 6), slice(0, 2), slice(3, 5), 2)
    return pred, gt


def merge_case() -> tuple[np.ndarray, np.ndarray]:
    """Two gt objects (2x2 = 4 px at cols 0-1, 2x3 = 6 px at cols 3-5) merged into one 2x5 prediction (cols 1-5)."""
    gt = block((4, 6), slice(0, 2), slice(0, 2), 1) + block((4, 6), slice(0, 2), slice(3, 6), 2)
    pred = block((4, 6), slice(0, 2), slice(1, 6), 1)
    return pred, gt


def test_split() -> None:
    """One gt split into two predictions."""
    pred, gt = split_case()
    # G (10 px) vs P1 (6 px): inter 6, union 10, IoU 0.6; vs P2 (4 px): inter 4, union 10, IoU 0.4
    # AJI: G picks P1 -> C = 6, U = 10; P2 never chosen -> U += 4 -> AJI = 6/14 = 3/7
    assert aggregated_jaccard_index(pred, gt) == pytest.approx(3 / 7, abs=APPROX)
    # PQ: TP = (G, P1) with IoU 0.6; FP = P2; FN = none -> 0.6 / (1 + 0.5) = 0.4
    assert panoptic_quality(pred, gt) == pytest.approx(0.4, abs=APPROX)


def test_merge() -> None:
    """Two gt objects merged into one prediction."""
    pred, gt = merge_case()
    # P = 10 px (cols 1-5). G1 (cols 0-1, 4 px): inter = col 1 = 2 px, union 4 + 10 - 2 = 12, IoU 1/6
    # G2 (cols 3-5, 6 px): inter 6, union 6 + 10 - 6 = 10, IoU 0.6
    # AJI: G1 -> P: C 2, U 12; G2 -> P: C 6, U 10; no unused pred -> 8 / 22 = 4/11
    assert aggregated_jaccard_index(pred, gt) == pytest.approx(4 / 11, abs=APPROX)
    # PQ: TP = (G2, P) IoU 0.6; FN = G1; FP none -> 0.6 / (1 + 0.5) = 0.4
    assert panoptic_quality(pred, gt) == pytest.approx(0.4, abs=APPROX)


def test_unmatched_gt_and_false_positive() -> None:
    """A perfect match, a missed gt and a disjoint false positive."""
    gt = block((6, 6), slice(0, 2), slice(0, 2), 1) + block((6, 6), slice(4, 5), slice(4, 6), 2)
    pred = block((6, 6), slice(0, 2), slice(0, 2), 1) + block((6, 6), slice(3, 4), slice(0, 3), 2)
    # G1 (4 px) = P1 (4 px): C 4, U 4; G2 (2 px) overlaps nothing: U += 2; P2 (3 px) unused: U += 3
    # AJI = 4 / 9
    assert aggregated_jaccard_index(pred, gt) == pytest.approx(4 / 9, abs=APPROX)
    # PQ: TP 1 (IoU 1), FN 1, FP 1 -> 1 / (1 + 0.5 + 0.5) = 0.5
    assert panoptic_quality(pred, gt) == pytest.approx(0.5, abs=APPROX)


def test_aji_and_pq_are_zero_when_no_instance_overlaps() -> None:
    gt = block((6, 6), slice(0, 2), slice(0, 2), 1)
    pred = block((6, 6), slice(4, 6), slice(4, 6), 1)  # both maps hold an instance, they never touch
    assert aggregated_jaccard_index(pred, gt) == 0.0
    assert panoptic_quality(pred, gt) == 0.0


def test_aji_picks_max_iou_not_max_intersection() -> None:
    """1x60 image: G = cols 0-9 (10 px); P1 = cols 5-54 (50 px, id 1); P2 = cols 0-3 (4 px, id 2)."""
    gt = block((1, 60), slice(0, 1), slice(0, 10))
    pred = block((1, 60), slice(0, 1), slice(5, 55), 1) + block((1, 60), slice(0, 1), slice(0, 4), 2)
    # P1: inter 5, union 10 + 50 - 5 = 55, IoU 1/11; P2: inter 4, union 10, IoU 0.4 -> G picks P2
    # C = 4, U = 10 + |P1| 50 (unused) = 60 -> AJI = 1/15 (picking P1 would give 5/(55+4) = 5/59)
    assert aggregated_jaccard_index(pred, gt) == pytest.approx(1 / 15, abs=APPROX)
    # PQ: no IoU > 0.5 -> TP 0 -> 0
    assert panoptic_quality(pred, gt) == 0.0


def test_non_contiguous_ids_match_contiguous() -> None:
    """Relabelling ids (gt {0, 3, 17}, pred {0, 5, 900}) changes neither AJI nor PQ."""
    pred, gt = merge_case()
    gt_nc = np.where(gt == 1, 3, np.where(gt == 2, 17, 0))
    pred_nc = np.where(pred == 1, 900, 0)
    assert aggregated_jaccard_index(pred_nc, gt_nc) == pytest.approx(4 / 11, abs=APPROX)
    assert panoptic_quality(pred_nc, gt_nc) == pytest.approx(0.4, abs=APPROX)
    pred, gt = split_case()
    gt_nc = np.where(gt == 1, 17, 0)
    pred_nc = np.where(pred == 1, 5, np.where(pred == 2, 900, 0))
    assert aggregated_jaccard_index(pred_nc, gt_nc) == pytest.approx(3 / 7, abs=APPROX)
    assert panoptic_quality(pred_nc, gt_nc) == pytest.approx(0.4, abs=APPROX)
    # ids beyond int32 are relabelled to 1..n first
    pred_big = np.where(pred == 1, 2**40 + 5, np.where(pred == 2, 5, 0))
    assert aggregated_jaccard_index(pred_big, gt_nc) == pytest.approx(3 / 7, abs=APPROX)
    assert panoptic_quality(pred_big, gt_nc) == pytest.approx(0.4, abs=APPROX)


def test_instance_scores_per_slice() -> None:
    """Slice 0: split case (AJI 3/7, PQ 0.4); slice 1: both empty (1, 1)."""
    pred, gt = split_case()
    pred_vol = np.stack([pred, np.zeros_like(pred)])
    gt_vol = np.stack([gt, np.zeros_like(gt)])
    out = instance_scores(pred_vol, gt_vol)
    assert out["per_slice"]["aji"] == pytest.approx([3 / 7, 1.0], abs=APPROX)
    assert out["per_slice"]["pq"] == pytest.approx([0.4, 1.0], abs=APPROX)
    # means: (3/7 + 1)/2 = 5/7; (0.4 + 1)/2 = 0.7
    assert out["slice_mean"]["aji"] == pytest.approx(5 / 7, abs=APPROX)
    assert out["slice_mean"]["pq"] == pytest.approx(0.7, abs=APPROX)


def test_instance_ids_are_per_slice() -> None:
    """Id 1 in slice 0 and id 1 in slice 1 are different objects: each slice matches perfectly."""
    a = block((4, 4), slice(0, 2), slice(0, 2))
    b = block((4, 4), slice(2, 4), slice(2, 4))
    out = instance_scores(np.stack([a, b]), np.stack([a, b]))
    assert out["slice_mean"] == pytest.approx({"aji": 1.0, "pq": 1.0}, abs=APPROX)


def random_disks(
    rng: np.random.Generator, shape: tuple[int, int], centres: np.ndarray, radii: np.ndarray
) -> np.ndarray:
    """Paint disks in order (later ones overwrite earlier ones) with random, non-contiguous ids."""
    out = np.zeros(shape, dtype=np.int64)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    ids = rng.choice(10_000, size=len(radii), replace=False) + 1
    for (cy, cx), r, i in zip(centres, radii, ids):
        out[(yy - cy) ** 2 + (xx - cx) ** 2 <= r**2] = i
    return out


def relabel_consecutive(labels: np.ndarray) -> np.ndarray:
    """Ids mapped to 1..n in increasing order, 0 kept (MONAI casts to int32 before its own remap)."""
    ids = np.unique(labels[labels != 0])
    return np.where(labels != 0, np.searchsorted(ids, labels) + 1, 0).astype(np.int32)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("match_iou", [0.3, 0.5, 0.75])
def test_panoptic_quality_matches_monai(seed: int, match_iou: float) -> None:
    """Random overlapping disks, pred = jittered gt with drops and extras, agree with MONAI's PQ to 1e-6."""
    rng = np.random.default_rng(seed)
    shape = (96, 128)
    n = 25
    centres = rng.uniform(0, shape, size=(n, 2))
    radii = rng.uniform(3, 12, size=n)
    gt = random_disks(rng, shape, centres, radii)
    keep = rng.random(n) > 0.15  # missed objects
    n_extra = 4  # false positives
    jitter = rng.normal(0, 2.5, size=(keep.sum(), 2))
    pred_centres = np.concatenate([centres[keep] + jitter, rng.uniform(0, shape, (n_extra, 2))])
    pred_radii = np.concatenate([radii[keep] * rng.uniform(0.7, 1.3, keep.sum()), rng.uniform(3, 8, n_extra)])
    pred = random_disks(rng, shape, pred_centres, pred_radii)
    expected = compute_panoptic_quality(
        torch.from_numpy(relabel_consecutive(pred)),
        torch.from_numpy(relabel_consecutive(gt)),
        metric_name="pq",
        remap=True,
        match_iou_threshold=match_iou,
        smooth_numerator=0.0,
    )
    assert 0.0 < float(expected) < 1.0
    assert panoptic_quality(pred, gt, match_iou=match_iou) == pytest.approx(float(expected), abs=APPROX)


# ---------------------------------------------------------------------------------------------
# Shape checks
# ---------------------------------------------------------------------------------------------


def test_shape_mismatch_raises() -> None:
    """Every entry point rejects arrays of different shapes and names both shapes."""
    a2, b2 = np.zeros((4, 4)), np.zeros((4, 5))
    a3, b3 = np.zeros((2, 4, 4)), np.zeros((2, 4, 5))
    for call in (
        lambda: confusion_counts(a2, b2),
        lambda: average_precision(a2, b2),
        lambda: binary_scores(a2, b2, None),
        lambda: binary_scores(a2, a2, b2),
        lambda: aggregated_jaccard_index(a2, b2),
        lambda: panoptic_quality(a2, b2),
        lambda: slice_and_volume_scores(a3, b3, None),
        lambda: instance_scores(a3, b3),
    ):
        with pytest.raises(ValueError, match=r"\(4, 4\).*\(4, 5\)|\(2, 4, 4\).*\(2, 4, 5\)|\(4, 5\).*\(4, 4\)"):
            call()
    with pytest.raises(ValueError, match="Z, Y, X"):
        slice_and_volume_scores(a2, a2, None)


# ---------------------------------------------------------------------------------------------
# Evaluation overlays
# ---------------------------------------------------------------------------------------------

# On a black pixel (grey 0) a colour c blends to rint(0.5 * 0 + 0.5 * c): 255 -> rint(127.5) = 128.
TP_ON_BLACK, FP_ON_BLACK, FN_ON_BLACK = (0, 128, 0), (128, 0, 0), (0, 0, 128)


def overlay_case(depth: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, probability, labels) of `depth` 4x4 slices: black image with one white pixel at (3, 3);
    (0, 0) true positive, (0, 1) false positive, (1, 0) false negative, the rest true negative."""
    image = np.zeros((depth, 4, 4), np.uint8)
    image[:, 3, 3] = 255
    probability = np.zeros((depth, 4, 4), np.float32)
    probability[:, 0, 0] = 0.9
    probability[:, 0, 1] = 0.5  # >= threshold 0.5 is foreground
    probability[:, 1, 0] = 0.4
    labels = np.zeros((depth, 4, 4), np.uint16)
    labels[:, 0, 0] = labels[:, 1, 0] = 7
    return image, probability, labels


def test_error_overlay_colours() -> None:
    image, probability, labels = overlay_case()
    rgb = error_overlay(image[0], probability[0] >= 0.5, labels[0] > 0)
    assert rgb.dtype == np.uint8 and rgb.shape == (4, 4, 3)
    assert tuple(rgb[0, 0]) == TP_ON_BLACK
    assert tuple(rgb[0, 1]) == FP_ON_BLACK
    assert tuple(rgb[1, 0]) == FN_ON_BLACK
    assert tuple(rgb[1, 1]) == (0, 0, 0) and tuple(rgb[3, 3]) == (255, 255, 255)  # true negatives: the grey image


def write_overlay_case(root: Path, depth: int = 3) -> dict[str, Path]:
    """The overlay case as prediction folder, label and image files under `root`."""
    image, probability, labels = overlay_case(depth)
    paths = {"pred": root / "pred", "label": root / "label.tif", "image": root / "image.tif", "out": root / "scores"}
    paths["pred"].mkdir(parents=True)
    tifffile.imwrite(paths["pred"] / "probability.tif", probability, photometric="minisblack")
    tifffile.imwrite(paths["pred"] / "instances.tif", (probability >= 0.5).astype(np.uint16), photometric="minisblack")
    tifffile.imwrite(paths["label"], labels, photometric="minisblack")
    tifffile.imwrite(paths["image"], image, photometric="minisblack")
    return paths


def test_evaluate_writes_overlays(tmp_path: Path) -> None:
    paths = write_overlay_case(tmp_path)
    evaluate_predictions(paths["pred"], paths["label"], paths["out"], image=paths["image"], overlay_slices=[2, 0, 44])
    assert sorted(p.name for p in paths["out"].iterdir()) == ["metrics.json", "overlay_z000.png", "overlay_z002.png"]
    rgb = iio.imread(paths["out"] / "overlay_z002.png")
    assert rgb.shape == (4 + 2 * LEGEND_LINE_PX + 4, 4, 3)  # the slice, then two legend lines below it
    assert (tuple(rgb[0, 0]), tuple(rgb[0, 1]), tuple(rgb[1, 0])) == (TP_ON_BLACK, FP_ON_BLACK, FN_ON_BLACK)


def test_a_legend_shows_its_swatches_and_text_below_the_image() -> None:
    image = np.full((60, 400, 3), 128, dtype=np.uint8)
    lines = [[(None, "vol.tif  slice 12"), (None, "Dice 0.912")], [(TP_COLOUR, "found"), (FP_COLOUR, "false positive")]]
    rgb = with_legend(image, lines, bar=(50, "1 µm"))
    assert rgb.shape == (60 + 2 * LEGEND_LINE_PX + 4, 400, 3)
    np.testing.assert_array_equal(rgb[:60], image)  # the image untouched
    strip = rgb[60:]
    colours = {tuple(c) for c in strip.reshape(-1, 3)}
    assert {TP_COLOUR, FP_COLOUR, (255, 255, 255)} <= colours  # swatches, white text and scale bar
    assert np.all(strip[11:16, 400 - 6 - 50 : 400 - 6] == 255)  # the scale bar: 50 px long, at the right
    assert {TP_COLOUR, FP_COLOUR}.isdisjoint({tuple(c) for c in strip[:LEGEND_LINE_PX].reshape(-1, 3)})  # row 2


def test_scale_bar_is_a_round_length_near_a_fifth_of_the_width() -> None:
    assert scale_bar(5.0, 400) == (40, "200 nm")  # 80 px x 5 nm = 400 nm -> 200 nm
    assert scale_bar(18.4, 1024) == (109, "2 µm")
    assert scale_bar(1.0, 1000) == (200, "200 nm")


def test_outline_overlay_colours_the_rim_of_each_instance_by_id() -> None:
    image = np.zeros((20, 20), dtype=np.float32)
    image[0, 0] = 1.0
    instances = np.zeros((20, 20), dtype=np.uint32)
    instances[2:8, 2:8], instances[10:18, 10:18] = 1, 2
    rgb = outline_overlay(image, instances)
    assert tuple(rgb[2, 5]) == OUTLINE_COLOURS[1] and tuple(rgb[10, 12]) == OUTLINE_COLOURS[2]  # rims by id
    assert tuple(rgb[5, 5]) == (0, 0, 0) and tuple(rgb[14, 14]) == (0, 0, 0)  # insides stay the grey image
    assert tuple(rgb[0, 0]) == (255, 255, 255) and tuple(rgb[19, 0]) == (0, 0, 0)  # background: grey image


def test_evaluate_default_and_no_overlays(tmp_path: Path) -> None:
    paths = write_overlay_case(tmp_path)
    # the default overlay_slices [0, 22, 44] on 3 slices draws slice 0 only
    evaluate_predictions(paths["pred"], paths["label"], paths["out"], image=paths["image"])
    assert sorted(p.name for p in paths["out"].iterdir()) == ["metrics.json", "overlay_z000.png"]
    evaluate_predictions(paths["pred"], paths["label"], tmp_path / "none", overlay_slices=[])
    assert [p.name for p in (tmp_path / "none").iterdir()] == ["metrics.json"]


def test_evaluate_overlay_bad_input_writes_nothing(tmp_path: Path) -> None:
    paths = write_overlay_case(tmp_path)
    wrong = tmp_path / "wrong.tif"
    tifffile.imwrite(wrong, np.zeros((3, 4, 5), np.uint8), photometric="minisblack")
    raises_one_line(evaluate_predictions, paths["pred"], paths["label"], paths["out"], image=wrong, name="wrong.tif")
    raises_one_line(evaluate_predictions, paths["pred"], paths["label"], paths["out"], name="--image")
    common = (evaluate_predictions, paths["pred"], paths["label"], paths["out"])
    raises_one_line(*common, image=paths["image"], overlay_slices=[-1], name="overlay_slices")
    nan = tmp_path / "nan.tif"
    tifffile.imwrite(nan, np.full((3, 4, 4), np.nan, np.float32), photometric="minisblack")
    raises_one_line(evaluate_predictions, paths["pred"], paths["label"], paths["out"], image=nan, name="nan.tif")
    assert not paths["out"].exists()

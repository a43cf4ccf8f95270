"""scripts/error_split.py on a hand-made slice: outline vs look-alike false positives, partial vs missed objects."""

from __future__ import annotations

import importlib.util

import numpy as np

from tests.helpers import REPO

spec = importlib.util.spec_from_file_location("error_split", REPO / "scripts" / "error_split.py")
error_split = importlib.util.module_from_spec(spec)
spec.loader.exec_module(error_split)


def test_error_split_counts_each_kind() -> None:
    instances = np.zeros((1, 40, 40), np.int32)
    instances[0, 5:15, 5:15] = 1  # predicted 1 px too wide on every side: 44 outline false positives
    instances[0, 20:30, 5:15] = 2  # predicted on its left half only: 50 partial false negatives
    instances[0, 30:34, 30:34] = 3  # not predicted at all: 16 missed pixels
    probability = np.zeros((1, 40, 40), np.float32)
    probability[0, 4:16, 4:16] = 0.9
    probability[0, 20:30, 5:10] = 0.9
    probability[0, 2:5, 30:35] = 0.6  # a look-alike of 15 px, far from every mitochondrion
    split = error_split.error_split(probability, instances, radii=(1, 2, 30))
    assert split["tp"] == 100 + 50
    assert split["fp_outline"] == 144 - 100 and split["fp_lookalike"] == 15
    assert split["fp_within_1px"] == 40 and split["fp_within_2px"] == 44  # the ring's 4 corners are √2 away
    assert split["fp_within_30px"] == 44 + 15
    assert split["fn_partial"] == 50 and split["fn_missed"] == 16
    # the missed half lies 1-5 px from the predicted half: 2 columns of 10 in the 2-px rim, none beyond 5 px
    assert split["fn_partial_rim_2px"] == 20 and split["fn_partial_beyond_5px"] == 0
    assert error_split.dice(probability >= 0.5, instances > 0) == 2 * 150 / (144 + 50 + 15 + 216)


def test_component_masses_flags_true_and_lookalike_components() -> None:
    truth = np.zeros((1, 20, 20), bool)
    truth[0, 2:8, 2:8] = True
    probability = np.zeros((1, 20, 20), np.float32)
    probability[0, 2:8, 2:8] = 0.9
    probability[0, 12:16, 12:16] = 0.8
    density = np.zeros((1, 20, 20), np.float32)
    density[0, 4, 4] = 1.0
    rows = error_split.component_masses(probability, density, truth)
    assert rows.shape == (2, 3)
    assert rows[0, 2] == 1 and rows[0, 0] > 0.9 and rows[0, 1] == 36
    assert rows[1, 2] == 0 and rows[1, 0] < 1e-6 and rows[1, 1] == 16


def test_dice_after_erosion_rewards_a_too_wide_outline_only() -> None:
    truth = np.zeros((1, 30, 30), bool)
    truth[0, 10:20, 10:20] = True
    wide = np.zeros_like(truth)
    wide[0, 9:21, 9:21] = True  # 1 px too wide: eroding 1 px gives the truth back
    scores = error_split.dice_after_erosion(wide, truth, pixels=(1, 2))
    assert scores[1] == 1.0 and scores[2] == 2 * 64 / (64 + 100)
    assert error_split.dice_after_erosion(truth, truth, pixels=(1,))[1] == 2 * 64 / (64 + 100)  # a right one loses

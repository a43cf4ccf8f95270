"""The pseudo-label round as pure functions: the outline rule's premise on hand-made images, the label-free checks,
held-out clicks that never reach training."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from bundle.data.density import density_map
from bundle.data.target import split_clicks
from bundle.errors import InputError
from bundle.handlers import PseudoLabelRounds
from bundle.handlers.run_events import Cancelled, listening
from bundle.pseudo_labels.rounds import (
    RoundRule,
    click_checks,
    dark_membrane_premise,
    erode_outlines,
    label_round,
    membrane_profile,
    outline_cut_depth,
    slice_checks,
)

SIZE, RADIUS = 96, 14
CENTRES = [(24, 24), (24, 72), (72, 24), (72, 72)]


def mitochondria(kind: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(z-scored image, pseudo-label) of four mitochondria of radius RADIUS drawn as `kind`:
    "membrane": a dark 2-px membrane at the outline, grey interior, bright cytoplasm (EPFL, FAFB);
    "dark_interior": darkest at the centre, brightening to the outline, no darker ring (the SBEM volume);
    "inverted": the membrane image with inverted contrast; "no_membrane": flat grey disks on the cytoplasm.
    The pseudo-label is each disk grown by 2 px, as a source model's too-wide outlines."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    distance = np.min([np.hypot(yy - y, xx - x) for y, x in CENTRES], axis=0)  # to the nearest centre
    image = np.full((SIZE, SIZE), 1.0)  # cytoplasm
    inside = distance <= RADIUS
    if kind in ("membrane", "inverted"):
        image[inside] = 0.0
        image[np.abs(distance - RADIUS) <= 1.0] = -1.5
    elif kind == "dark_interior":
        image[inside] = -2.0 + 2.5 * distance[inside] / RADIUS  # -2 at the centre, +0.5 at the outline
    elif kind == "no_membrane":
        image[inside] = 0.0
    if kind == "inverted":
        image = -image
    image = image + np.random.default_rng(seed).normal(0, 0.1, image.shape)
    label = (distance <= RADIUS + 2).astype(np.uint8)
    return ((image - image.mean()) / image.std()).astype(np.float32), label


@pytest.mark.parametrize("kind, holds", [("membrane", True), ("dark_interior", False), ("inverted", False),
                                         ("no_membrane", False)])  # fmt: skip
def test_the_dark_membrane_premise_is_tested_per_volume(kind: str, holds: bool) -> None:
    image, label = mitochondria(kind)
    premise, reason = dark_membrane_premise(membrane_profile([image], [label]))
    assert premise is holds, reason
    assert "interior" in reason and "exterior" in reason  # the numbers behind the decision


def _source_items() -> list[dict]:
    """Two dense source slices: one disk of radius 20 each (binary labels)."""
    yy, xx = np.mgrid[:64, :64]
    return [{"image": np.zeros((1, 64, 64), np.float32), "label": (np.hypot(yy - 32, xx - 32) <= 20).astype(np.uint8)[None]}
            for _ in range(2)]  # fmt: skip


def _rounds(
    tmp_path: Path, kind: str, holdout: np.ndarray | None = None, source_items: list[dict] | None = None
) -> tuple[PseudoLabelRounds, np.ndarray]:
    """One round with the outline rule on, over a network that predicts the grown disks confidently."""
    image, label = mitochondria(kind)
    probability = np.where(label == 1, 0.95, 0.02)
    logits = np.stack([np.zeros_like(probability), np.log(probability / (1 - probability))])
    density = density_map(np.array(CENTRES), (SIZE, SIZE), sigma=5.0)
    output = torch.as_tensor(np.concatenate([logits, density[None]]), dtype=torch.float32)[None]

    class Fixed(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return output

    items = [{"image": image[None]}]
    rule = RoundRule(beta=0.0, omega_fractions=[1.0], sigma=5.0, peak_min_distance=10, snap_to_membranes=True)
    rounds = PseudoLabelRounds(items, Fixed(), lambda x, net: net(x), tmp_path / kind, gt_points=np.array([[0, 24, 24]]),
                               num_rounds=1, rule=rule, tta_views=1, holdout_points=holdout,
                               source_items=source_items)  # fmt: skip
    rounds.run_round()
    return rounds, items[0]["label"][0]


def test_the_outline_rule_does_not_shrink_dark_interior_mitochondria(tmp_path: Path) -> None:
    source = _source_items()
    rounds, labels = _rounds(tmp_path, "dark_interior", source_items=source)
    _, grown = mitochondria("dark_interior")
    assert rounds.snap is False and rounds.outline_cut == 0.0
    assert np.array_equal(labels == 1, grown == 1)  # every pseudo-labelled pixel stays
    assert all(np.array_equal(item["label"], _source_items()[0]["label"]) for item in source)  # and every source one
    summary = json.loads((tmp_path / "dark_interior" / "round_0" / "summary.json").read_text())
    assert summary["outline_rule"].startswith("not applied: the darkest ring lies inside the mitochondria")


def test_the_outline_rule_cuts_back_to_a_dark_membrane(tmp_path: Path) -> None:
    source = _source_items()
    rounds, labels = _rounds(tmp_path, "membrane", source_items=source)
    _, grown = mitochondria("membrane")
    assert rounds.snap is True
    assert (labels == 1).sum() < 0.9 * (grown == 1).sum()  # the 2-px overreach is cut back ...
    assert 1.5 < rounds.outline_cut < 3.0  # ... measured as about 2 px deep ...
    before = _source_items()[0]["label"][0]
    assert outline_cut_depth([before], [source[0]["label"][0]]) == pytest.approx(rounds.outline_cut, abs=0.35)
    summary = json.loads((tmp_path / "membrane" / "round_0" / "summary.json").read_text())
    assert summary["outline_cut_px"] == round(rounds.outline_cut, 3)  # ... the source labels lose a band as deep
    state = rounds.state_dict()
    assert state["snap"] == 1 and "dark membrane" in state["snap_reason"]  # ... and the decision travels
    fresh_source = _source_items()
    fresh, _ = _rounds(tmp_path / "again", "dark_interior", source_items=fresh_source)
    fresh.load_state_dict(state)
    assert fresh.snap is True and fresh.outline_cut == rounds.outline_cut
    assert np.array_equal(fresh_source[1]["label"], source[1]["label"])  # a resumed run's source labels: the same cut


def test_erode_outlines_cuts_a_band_as_deep_as_outline_cut_depth_measures() -> None:
    yy, xx = np.mgrid[:80, :80]
    disk = (np.hypot(yy - 40, xx - 40) <= 25).astype(np.uint8)
    disk[0, 0] = 255  # an ignored pixel stays ignored
    for depth in (1.0, 2.0, 3.5):
        eroded = erode_outlines(disk, depth)
        assert outline_cut_depth([disk], [eroded]) == pytest.approx(depth, abs=0.3)
        assert eroded[0, 0] == 255 and not ((eroded == 1) & (disk != 1)).any()  # only shrinks
    assert np.array_equal(erode_outlines(disk, 0.0), disk) and outline_cut_depth([np.zeros((4, 4))], [np.zeros((4, 4))]) == 0


def test_a_listener_in_the_process_gets_each_round_and_cancels_between_slices(tmp_path: Path) -> None:
    events: list[dict] = []
    with listening(events.append):
        _, labels = _rounds(tmp_path, "membrane")
    (event,) = events
    assert (event["kind"], event["round"], event["num_rounds"]) == ("round", 1, 1)
    assert np.array_equal(event["labels"][0], labels) and event["folder"] == tmp_path / "membrane" / "round_0"
    assert event["probability"].shape == (1, SIZE, SIZE) and event["instances"].max() == len(CENTRES)
    cancel = threading.Event()
    cancel.set()
    with listening(events.append, cancel), pytest.raises(Cancelled):
        _rounds(tmp_path / "cancelled", "membrane")
    assert len(events) == 1 and not (tmp_path / "cancelled" / "membrane" / "round_0").exists()


def test_a_whole_round_is_a_function_of_predictions_images_and_points() -> None:
    """`label_round` without an engine or network: one slice's prediction at a time, the outline decision taken on the
    first round and passed on, fixed counts honoured, held-out clicks scored and never labelled."""
    image, grown = mitochondria("membrane")
    probability = np.where(grown == 1, 0.95, 0.02).astype(np.float32)  # a model whose outlines reach 2 px too far
    centres = np.array(CENTRES)
    density = density_map(centres, image.shape, 11.0).astype(np.float32)
    consumed = []

    def predictions():  # a generator, as the handler's: the round must not need every slice at once
        for z in range(2):
            consumed.append(z)
            yield probability, density

    rule = RoundRule(beta=0.0, omega_fractions=(0.95,), snap_to_membranes=True, point_radius=3, peak_min_distance=7)
    gt, none = [centres[:1], centres[:1]], [np.zeros((0, 2), np.int64)] * 2
    holdout = [np.array([[48, 48], list(CENTRES[3])]), np.zeros((0, 2), np.int64)]
    first = label_round(rule, 0, predictions(), [image, image], gt, none, holdout, counts=[4.0, 4.0])
    assert consumed == [0, 1] and first.labels.shape == (2, SIZE, SIZE) and first.counts == [4.0, 4.0]
    assert first.snap is True and "dark membrane" in first.snap_reason and 1.5 < first.outline_cut < 3.0
    assert (first.labels[0] == 1).sum() < 0.9 * (grown == 1).sum()  # the outline rule cut the overreach back
    assert first.labels[0][48, 48] != 1  # a held-out click is scored, never taught
    assert first.checks["holdout_clicks"] == 2 and first.checks["holdout_click_recall"] == 0.5
    assert first.point_masks[0][tuple(CENTRES[0])] == 1 and first.point_masks[0][tuple(CENTRES[3])] == 0
    kept = label_round(rule, 0, predictions(), [image, image], gt, none, holdout, counts=[4.0, 4.0], snap=False,
                       snap_reason="earlier")  # fmt: skip
    assert kept.snap is False and kept.snap_reason == "earlier"  # an earlier decision is not taken again
    assert kept.outline_cut is None  # nor measured again
    assert (kept.labels[0] == 1).sum() > (first.labels[0] == 1).sum()  # and without the rule nothing is cut
    with pytest.raises(ValueError, match="2 predictions for 3 slices"):
        label_round(rule, 0, predictions(), [image] * 3, gt * 2, none * 2, holdout * 2)


def test_held_out_clicks_are_scored_never_trained_on(tmp_path: Path) -> None:
    # a held-out click on a mitochondrion the model misses (no disk there) and one inside a predicted disk
    holdout = np.array([[0, 48, 48], [0, 72, 72]])
    rounds, labels = _rounds(tmp_path, "membrane", holdout=holdout)
    assert labels[48, 48] != 1  # not taught as foreground: only the training clicks are
    summary = json.loads((tmp_path / "membrane" / "round_0" / "summary.json").read_text())
    assert summary["holdout_clicks"] == 2 and summary["holdout_click_recall"] == 0.5
    assert summary["instance_count"] == 4 and summary["density_count"] == pytest.approx(4, abs=0.2)


def test_slice_checks_and_their_summary() -> None:
    probability = np.zeros((32, 32))
    probability[2:10, 2:10] = 0.9  # one instance of 64 px
    probability[20, 20] = 0.9  # and a 1-px speck below min_size
    per_slice = [slice_checks(probability, np.zeros((32, 32)), np.array([[5, 5], [25, 25]]))]
    assert click_checks(per_slice) == {"holdout_clicks": 2, "holdout_click_recall": 0.5, "instance_count": 1,
                                       "density_count": 0.0, "foreground_share": round(65 / 32**2, 5)}  # fmt: skip
    assert click_checks([])["holdout_click_recall"] is None


def test_split_clicks_is_seeded_and_keeps_training_clicks() -> None:
    points = np.column_stack([np.zeros(10, int), np.arange(10), np.arange(10)])
    train, holdout = split_clicks(points, 0.2, seed=0)
    again, _ = split_clicks(points, 0.2, seed=0)
    assert len(train) == 8 and len(holdout) == 2 and np.array_equal(train, again)
    assert not set(map(tuple, train)) & set(map(tuple, holdout))
    assert len(split_clicks(points[:1], 0.5)[0]) == 1  # the only click is trained on
    assert len(split_clicks(points, 0.0)[1]) == 0


def test_best_round_keeps_an_earlier_model_only_when_it_is_clearly_better() -> None:
    from bundle.data.target import best_round

    rounds = [{"round": 1, "holdout_click_recall": 0.9}, {"round": 2, "holdout_click_recall": 0.8},
              {"round": 3, "holdout_click_recall": 0.7}]  # fmt: skip
    assert best_round(rounds, {"holdout_click_recall": 0.6}, 0.05) == 2  # round 2's model beats the last by 0.2
    assert best_round(rounds, {"holdout_click_recall": 0.78}, 0.05) is None  # within the margin: the last stays
    assert best_round(rounds[:1], {"holdout_click_recall": 0.1}, 0.05) is None  # never the starting model
    assert best_round(rounds, {"holdout_click_recall": None}, 0.05) is None  # nothing held out


@pytest.mark.parametrize("margin", [-1, 1.5, True, "1"])
def test_the_rule_refuses_an_outline_margin_that_is_not_a_whole_number_of_pixels(margin) -> None:
    with pytest.raises(InputError) as info:
        RoundRule(outline_margin=margin)
    assert str(info.value).startswith("outline_margin: ") and "\n" not in str(info.value)
    assert RoundRule(outline_margin=2).outline_margin == 2

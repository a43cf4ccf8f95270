"""Class-focused contrastive alignment: eq. 4 by hand, query sampling, prototype bank schedule and checkpoint, point masks."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine

from bundle.data.paired import prepare_paired_batch
from bundle.handlers import PrototypeBank
from bundle.inference import FeatureInferer
from bundle.losses import AdaptationLoss, ClassFocusedContrastLoss, ContrastiveAdaptationLoss, MultiTaskLoss
from bundle.losses.contrastive import class_contrast, info_nce, sample_queries
from bundle.losses.prototypes import class_prototypes, masked_mean
from bundle.networks import MultiTaskUNet, load_checkpoint
from bundle.pseudo_labels import instances_with_points
from tests.helpers import REPO
from tests.test_adaptation import adapt_command, crops  # noqa: F401 - the real-crop fixture of the adaptation tests

TAU = 0.5


def _logits(p_foreground: torch.Tensor) -> torch.Tensor:
    """Two-class logits whose softmax gives foreground probability `p_foreground` (B, H, W)."""
    return torch.stack([torch.zeros_like(p_foreground), torch.log(p_foreground / (1 - p_foreground))], dim=1)


def test_info_nce_two_queries_three_prototypes_by_hand() -> None:
    fg = torch.tensor([[1.0, 0.0], [0.6, 0.8]])  # two foreground prototypes, mean (0.8, 0.4) -> normalised
    bg = torch.tensor([[0.0, 1.0]])
    features = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # row 0: a background query, row 1: a foreground query
    loss = class_contrast([features[:1], features[1:]], [bg, fg], [torch.ones(1), torch.ones(2)], TAU)
    mean_fg_x = 0.8 / math.hypot(0.8, 0.4)  # q_fg · μ̄¹
    fg_term = -math.log(math.exp(mean_fg_x / TAU) / (math.exp(mean_fg_x / TAU) + math.exp(0.0 / TAU)))
    bg_term = -math.log(math.exp(1.0 / TAU) / (math.exp(1.0 / TAU) + math.exp(0.0 / TAU) + math.exp(0.8 / TAU)))
    assert loss.item() == pytest.approx((fg_term + bg_term) / 2, rel=1e-6)
    single = info_nce(features[1:], fg[0], bg, TAU)  # one query, positive (1, 0), negative (0, 1)
    assert single.item() == pytest.approx(-math.log(math.exp(2.0) / (math.exp(2.0) + 1.0)), rel=1e-6)


def _tiny_batch() -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """1 source + 1 target sample of 1x2 pixels, 2-d features: pixel 0 foreground, pixel 1 background, all confident."""
    features = torch.tensor([[[[0.6, 0.0]], [[0.8, 1.0]]], [[[1.0, 0.0]], [[0.0, 1.0]]]])  # (2, 2, 1, 2)
    p_foreground = torch.tensor([[[0.99, 0.01]], [[0.99, 0.01]]])
    output = torch.cat([_logits(p_foreground), torch.zeros(2, 1, 1, 2)], dim=1)
    target = {
        "label": torch.tensor([[[[1.0, 0.0]]], [[[1.0, 0.0]]]]),
        "point_mask": torch.tensor([[[[0.0, 0.0]]], [[[1.0, 0.0]]]]),
        "num_source": torch.tensor(1),
    }
    return output, features, target


def test_class_focused_loss_by_hand() -> None:
    output, features, target = _tiny_batch()
    bank = PrototypeBank()
    loss = ClassFocusedContrastLoss(bank, temperature=TAU)(output, features, target)
    # prototypes = this batch's means (empty bank): source fg (0.6, 0.8), target label fg (1, 0), target pl fg (1, 0);
    # background: target pl bg (0, 1) only (no clusters before the handler's first fit)
    mean_fg = torch.nn.functional.normalize(torch.tensor([2.6, 0.8]), dim=0)
    fg_term = -math.log(math.exp(mean_fg[0].item() / TAU) / (math.exp(mean_fg[0].item() / TAU) + 1.0))
    bg_term = -math.log(math.exp(1.0 / TAU) / (math.exp(1.0 / TAU) + math.exp(0.8 / TAU) + 1.0 + 1.0))
    assert loss.item() == pytest.approx((fg_term + bg_term) / 2, rel=1e-5)
    assert torch.allclose(bank.get("source_fg"), torch.tensor([0.6, 0.8]))
    assert torch.allclose(bank.get("target_label_fg"), torch.tensor([1.0, 0.0]))
    # a second identical batch: running means unchanged, so the same loss
    again = ClassFocusedContrastLoss(bank, temperature=TAU)(output, features, target)
    assert again.item() == pytest.approx(loss.item(), rel=1e-6)


@pytest.mark.parametrize("mode", ["source_only", "target_only", "both_separate", "background_focused", "foreground_focused"])
def test_every_mode_runs_and_is_finite(mode: str) -> None:
    output, features, target = _tiny_batch()
    features.requires_grad_(True)
    loss = ClassFocusedContrastLoss(PrototypeBank(), mode=mode, temperature=TAU)(output, features, target)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0 and torch.isfinite(features.grad).all()


def test_finite_with_empty_classes() -> None:
    torch.manual_seed(0)
    features = torch.randn(2, 4, 8, 8, requires_grad=True)
    output = torch.randn(2, 3, 8, 8)
    label = torch.zeros(2, 1, 8, 8)
    label[1] = 255  # the target is unlabelled: no query, no target prototype
    target = {"label": label, "num_source": torch.tensor(1)}
    bank = PrototypeBank()
    loss = ClassFocusedContrastLoss(bank)(output, features, target)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(features.grad).all()
    label[1, :, :4] = 0  # target background only: foreground has no query (and no target prototype) -> adds 0
    loss = ClassFocusedContrastLoss(bank)(output, features, {"label": label, "num_source": torch.tensor(1)})
    assert torch.isfinite(loss)
    combined = ContrastiveAdaptationLoss(AdaptationLoss(MultiTaskLoss()), ClassFocusedContrastLoss(PrototypeBank()), 5e-3)
    targets = {"label": label, "density": torch.zeros(2, 1, 8, 8), "num_source": torch.tensor(1)}
    assert torch.isfinite(combined((output, features), targets))
    assert combined(output, targets).item() == pytest.approx(AdaptationLoss(MultiTaskLoss())(output, targets).item())


def test_queries_respect_thresholds_and_counts() -> None:
    torch.manual_seed(0)
    probability_fg = torch.rand(2, 128, 128)
    probability = torch.stack([1 - probability_fg, probability_fg], dim=1)
    labels = torch.randint(0, 2, (2, 128, 128))
    labels[:, :8] = 255
    for c in (0, 1):
        idx = sample_queries(labels, probability, c, 0.95, 0.80, 1024)
        p, lab = probability[:, c].reshape(-1)[idx], labels.reshape(-1)[idx]
        assert len(idx) == 1024 and len(set(idx.tolist())) == 1024
        assert torch.all(lab == c) and torch.all((p > 0.95) | (p < 0.80))
        assert int((p > 0.95).sum()) == 512  # 512 easy + 512 hard when both have enough
    few_easy = sample_queries(labels, probability, 1, 0.999, 0.80, 1024)
    p = probability[:, 1].reshape(-1)[few_easy]
    num_easy = int(((labels == 1) & (probability[:, 1] > 0.999)).sum())
    assert len(few_easy) == 1024 and int((p > 0.999).sum()) == num_easy < 512  # hard ones fill the shortfall
    tiny = sample_queries(labels[:, 10:12, :3], probability[:, :, 10:12, :3], 1, 0.95, 0.80, 1024)
    assert len(tiny) == int(((labels[:, 10:12, :3] == 1) & ((probability[:, 1, 10:12, :3] > 0.95) | (probability[:, 1, 10:12, :3] < 0.8))).sum())
    assert len(sample_queries(torch.full((1, 4, 4), 255), probability[:1, :, :4, :4], 0)) == 0


def test_gradient_only_reaches_target_queries() -> None:
    """Queries come from target pixels labelled 0/1 with p > δe or p < δh; prototypes are detached."""
    torch.manual_seed(1)
    features = torch.randn(4, 8, 32, 32, requires_grad=True)
    p_foreground = torch.rand(4, 32, 32).clamp(0.001, 0.999)
    output = torch.cat([_logits(p_foreground), torch.zeros(4, 1, 32, 32)], dim=1)
    label = (torch.rand(4, 1, 32, 32) > 0.5).float()
    label[:, :, :4] = 255
    target = {"label": label, "point_mask": label.clamp(max=1), "num_source": torch.tensor(2)}
    loss = ClassFocusedContrastLoss(PrototypeBank(), num_queries=64)(output, features, target)
    loss.backward()
    touched = features.grad.abs().sum(1) > 0  # (B, H, W)
    assert touched[2:].any() and not touched[:2].any()  # never a source pixel
    assert not touched[:, :4].any()  # never an ignored pixel
    p_label = torch.where(label[:, 0] == 1, p_foreground, 1 - p_foreground)
    assert torch.all((p_label[touched] > 0.95) | (p_label[touched] < 0.80))
    assert int(touched.sum()) == 128  # 64 queries per class


def test_prototype_helpers() -> None:
    features = torch.arange(8.0).reshape(1, 2, 2, 2)  # channel 0: 0..3, channel 1: 4..7
    labels = torch.tensor([[[0, 1], [1, 255]]])
    prototypes = class_prototypes(features, labels)
    assert prototypes[1].tolist() == [1.5, 5.5] and prototypes[0].tolist() == [0.0, 4.0]
    assert masked_mean(features, torch.zeros(1, 2, 2, dtype=torch.bool)) is None
    assert class_prototypes(features, labels, mask=torch.tensor([[[1, 0], [1, 1]]]))[1].tolist() == [2.0, 6.0]


def _push_engine(bank: PrototypeBank) -> Engine:
    """A tiny engine whose every iteration pushes 16 random background features into the bank."""

    def step(engine: Engine, batch) -> None:
        bank.push("target_bg_kmeans", torch.randn(16, 4))

    engine = Engine(step)
    bank.attach(engine)
    return engine


def test_kmeans_refresh_on_schedule() -> None:
    torch.manual_seed(0)
    bank = PrototypeBank(refresh_interval=3, initial_fit=False)
    _push_engine(bank).run(range(10), max_epochs=1)
    assert bank.refreshes == [3, 6, 9] and bank.clusters["target_bg_kmeans"].shape == (2, 4)
    early = PrototypeBank(refresh_interval=3, initial_fit=True)
    _push_engine(early).run(range(7), max_epochs=1)
    assert early.refreshes == [1, 3, 6]  # one initial fit, then exactly every refresh_interval


def test_bank_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    bank = PrototypeBank(momentum=0.9)
    for _ in range(3):
        bank.update({"source_fg": torch.randn(4), "target_pl_bg": torch.randn(4), "target_label_fg": None})
        bank.push("target_bg_kmeans", torch.randn(32, 4))
    bank.refresh(1000)
    torch.save({"prototypes": bank.state_dict()}, tmp_path / "checkpoint.pt")
    fresh = PrototypeBank()
    fresh.load_state_dict(torch.load(tmp_path / "checkpoint.pt", weights_only=True)["prototypes"])
    for name in ("prototypes", "buffers", "clusters"):
        ours, theirs = getattr(bank, name), getattr(fresh, name)
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert fresh.refreshes == [1000] and "target_label_fg" not in fresh.prototypes


def test_instances_with_points() -> None:
    label = np.array(
        [
            [1, 1, 0, 0, 1],
            [1, 0, 0, 1, 0],  # (1, 3) touches (0, 4) only diagonally: separate 4-connected components
            [0, 0, 255, 0, 0],
            [1, 1, 255, 1, 1],
        ],
        dtype=np.uint8,
    )
    mask = instances_with_points(label, np.array([[1, 0], [3, 4], [2, 2]]))  # (2, 2) is an ignored pixel: no instance
    expected = np.array([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 1, 1]], dtype=np.uint8)
    assert mask.dtype == np.uint8 and np.array_equal(mask, expected)
    assert not instances_with_points(label, None).any()


def test_paired_batch_carries_point_mask() -> None:
    source = {"image": torch.zeros(1, 1, 4, 4), "label": torch.ones(1, 1, 4, 4), "density": torch.zeros(1, 1, 4, 4)}
    target = {**source, "density_mask": torch.zeros(1, 1, 4, 4), "point_mask": torch.ones(1, 1, 4, 4)}
    _, targets = prepare_paired_batch({"source": source, "target": target})
    assert targets["point_mask"][0].max() == 0 and targets["point_mask"][1].min() == 1
    _, no_points = prepare_paired_batch({"source": source, "target": {k: v for k, v in target.items() if k != "point_mask"}})
    assert no_points["point_mask"].max() == 0


def test_feature_inferer_and_old_checkpoint() -> None:
    network = load_checkpoint(MultiTaskUNet(width=16), REPO / "models" / "model.pt").eval()  # no new parameters
    x = torch.randn(1, 1, 32, 32)
    output, features = FeatureInferer()(x, network)
    assert torch.allclose(output, network(x)) and features.shape == (1, 16, 32, 32)


def test_contrast_config_short_run(crops: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    """The contrast config runs end to end on real crops (4 iterations, clusters refitted at 1, 2 and 4)."""
    run_dir = tmp_path / "run"
    command = adapt_command(crops, run_dir, iterations=4)
    command += ["--contrast_mode", "foreground_focused", "--refresh_interval", "2", "--num_queries", "64"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    final = torch.load(run_dir / "checkpoints" / "checkpoint_epoch=2.pt", weights_only=True)
    bank = final["prototypes"]
    assert [int(i) for i in bank["refreshes"]] == [1, 2, 4]
    assert bank["clusters"]["target_bg_kmeans"].shape == (2, 16)  # untrained model: no confident source_fg
    assert torch.isfinite(bank["prototypes"]["target_pl_bg"]).all()
    assert (run_dir / "pseudo_labels" / "round_1" / "point_mask.tif").is_file()


def test_the_shipped_finetune_config_runs_alone_on_the_target(crops: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    """configs/finetune.yaml, the one file of the shipped recipe, runs with train.yaml alone: target-only batches, the
    given source prototypes fixed, no source volume named or read (its paths point nowhere)."""
    prototypes = {"source_fg": torch.randn(16), "source_bg": torch.randn(16)}
    torch.save(prototypes, tmp_path / "prototypes.pt")
    run_dir = tmp_path / "run"
    command = adapt_command(crops, run_dir, iterations=4)
    command[command.index("--config_file") + 1] = "['configs/train.yaml','configs/finetune.yaml']"
    for key in ("--source_image", "--source_label"):
        command[command.index(key) + 1] = str(tmp_path / "no_such_source")
    command += ["--source_prototypes", str(tmp_path / "prototypes.pt"), "--num_queries", "64"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    bank = torch.load(run_dir / "checkpoints" / "checkpoint_epoch=2.pt", weights_only=True)["prototypes"]
    assert bank["fixed"] == ["source_bg", "source_fg"]
    assert all(torch.equal(bank["prototypes"][k], v) for k, v in prototypes.items())
    summary = (run_dir / "pseudo_labels" / "round_1" / "summary.json").read_text()
    assert '"outline_rule": "' in summary and '"outline_rule": "off"' not in summary  # snap_to_membranes is on


@pytest.mark.parametrize("source_free", [False, True])
def test_bench_contrast_runs_on_real_crops(source_free: bool) -> None:
    """scripts/bench_contrast.py, both batch layouts, one tiny iteration each (a smoke test, nothing timed)."""
    command = [sys.executable, "scripts/bench_contrast.py", "--iterations", "1", "--warmup", "0", "--block", "1", "--size", "64"]
    result = subprocess.run(command + ["--source_free"] * source_free, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"batch {0 if source_free else 2}+2 of 64^2" in result.stdout
    assert "overhead:" in result.stdout and "k-means refresh" in result.stdout

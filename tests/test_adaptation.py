"""Point-supervised adaptation through `monai.bundle`: a short run on real crops, killed and resumed."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from monai.bundle import ConfigParser

from bundle.data.io import read_volume
from bundle.data.paired import PairedDataset, prepare_paired_batch
from bundle.handlers.resume import ResumeFromLatest, latest_checkpoint, readable
from bundle.data.points import read_points, write_points
from bundle.losses import AdaptationLoss, MultiTaskLoss, loss_terms_transform
from bundle.networks import MultiTaskUNet
from tests.helpers import EPFL, REPO, VNC, assert_one_line_error, need, run_bundle

CROP = (slice(128, 384), slice(128, 384))
TARGET_CROP = (slice(0, 256), slice(200, 456))  # holds published split1 points on EPFL slices 0-1


@pytest.fixture(scope="module")
def crops(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real crops: 2 VNC slices (source), EPFL slices 0-1 (target, with the published split1 points inside the
    crop) and 120-121 (validation), and an untrained width-16 source checkpoint."""
    root = tmp_path_factory.mktemp("adapt")
    paths = {name: root / f"{name}.tif" for name in ("src_image", "src_label", "tgt_image", "val_image", "val_label")}
    arrays = (
        read_volume(need(VNC / "raw"))[:2][(slice(None), *CROP)],
        read_volume(VNC / "mitochondria")[:2][(slice(None), *CROP)],
        tifffile.imread(need(EPFL / "training.tif"), key=[0, 1])[(slice(None), *TARGET_CROP)],
        tifffile.imread(EPFL / "training.tif", key=[120, 121])[(slice(None), *CROP)],
        tifffile.imread(EPFL / "training_instances.tif", key=[120, 121])[(slice(None), *CROP)],
    )
    for name, array in zip(paths, arrays):
        tifffile.imwrite(paths[name], array, photometric="minisblack")
    points = read_points(need(EPFL / "points" / "15pct_split1.csv"))
    inside = (points[:, 0] < 2) & (points[:, 1] < 256) & (points[:, 2] >= 200) & (points[:, 2] < 456)
    points = points[inside] - np.array([0, 0, 200])
    assert len(points) >= 2
    paths["points"] = root / "points.csv"
    write_points(paths["points"], points)
    torch.manual_seed(0)
    paths["source_checkpoint"] = root / "source.pt"
    torch.save(MultiTaskUNet(width=16).state_dict(), paths["source_checkpoint"])
    return {"root": root, **paths}


def adapt_command(crops: dict[str, Path], output_dir: Path, iterations: int) -> list[str]:
    """A tiny CPU adaptation run (2 iterations per epoch, one pseudo-label round per epoch)."""
    return [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", "['configs/train.yaml','configs/finetune.yaml','configs/adapt_wda.yaml']",
        "--dataset_dir", str(crops["root"]),
        "--source_image", str(crops["src_image"]), "--source_label", str(crops["src_label"]),
        "--target_image", str(crops["tgt_image"]), "--target_slices", "all", "--target_points", str(crops["points"]),
        "--val_image", str(crops["val_image"]), "--val_label", str(crops["val_label"]), "--val_slices", "all",
        "--source_checkpoint", str(crops["source_checkpoint"]), "--output_dir", str(output_dir),
        "--num_iterations", str(iterations), "--val_interval", "2", "--batch_size", "1", "--crop_size", "[128,128]",
        "--num_workers", "0", "--tta_views", "2",
    ]  # fmt: skip


def test_paired_batch_and_loss_sum_per_domain() -> None:
    source = [{"image": torch.zeros(1, 4, 4), "label": torch.ones(1, 4, 4), "density": torch.zeros(1, 4, 4)}]
    target = [{"image": torch.ones(1, 4, 4), "label": torch.full((1, 4, 4), 255.0), "density": torch.zeros(1, 4, 4),
               "density_mask": torch.zeros(1, 4, 4)}]  # fmt: skip
    item = PairedDataset(source, target)[0]
    batch = {d: {k: v[None] for k, v in item[d].items()} for d in ("source", "target")}
    images, targets = prepare_paired_batch(batch)
    assert images[:, 0, 0, 0].tolist() == [0.0, 1.0] and int(targets["num_source"]) == 1
    assert targets["density_mask"][0].min() == 1 and targets["density_mask"][1].max() == 0
    pred = torch.zeros(2, 3, 4, 4)
    loss_fn = AdaptationLoss(MultiTaskLoss())
    assert loss_terms_transform(loss_fn)(None) is None  # before the first call: nothing to log
    loss = loss_fn(pred, targets)
    # source: CE ln 2 on 16 labelled pixels, density error 0; target: every pixel ignored and masked -> 0
    assert loss.item() == pytest.approx(np.log(2), rel=1e-5)
    terms = loss_terms_transform(loss_fn)(None)  # every unweighted term, by domain, for the loss-term curves
    assert terms.keys() == {"loss_terms/source/ce", "loss_terms/source/density", "loss_terms/target/ce", "loss_terms/target/density"}
    assert terms["loss_terms/source/ce"] == pytest.approx(np.log(2), rel=1e-5) and terms["loss_terms/target/ce"] == 0


def test_adaptation_killed_and_resumed(crops: dict[str, Path], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    command = adapt_command(crops, run_dir, iterations=6) + ["--fixed_count", "True", "--snap_to_membranes", "True"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_checkpoint = run_dir / "checkpoints" / "checkpoint_epoch=1.pt"
    deadline = time.time() + 600
    while not (first_checkpoint.exists() and readable(first_checkpoint)) and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)  # MONAI writes checkpoints in place: wait until epoch 1's is complete
    process.send_signal(signal.SIGKILL)  # killed somewhere in epoch 2 (maybe while saving it)
    process.wait()
    assert first_checkpoint.exists()
    saved = torch.load(first_checkpoint, weights_only=True)
    assert int(saved["pseudo_labels"]["round"]) == 1  # the round belongs to the checkpoint ...
    counts = saved["pseudo_labels"]["counts"]  # ... and so do round 1's counts (fixed_count)
    assert len(counts) == 2
    assert float(saved["pseudo_labels"]["outline_cut"]) >= 0  # and how deep the outline rule cut (source labels follow)
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "resumed from" in log
    assert "pseudo-label round 1/" not in log  # round 1 was not redone
    assert "pseudo-label round 2/" in log and "pseudo-label round 3/" in log
    final = torch.load(run_dir / "checkpoints" / "checkpoint_epoch=3.pt", weights_only=True)
    assert final["trainer"]["iteration"] == 6 and int(final["pseudo_labels"]["round"]) == 3
    torch.testing.assert_close(final["pseudo_labels"]["counts"], counts)  # kept through the resume
    labels = read_volume(run_dir / "pseudo_labels" / "round_2" / "labels.tif")
    assert labels.shape == (2, 256, 256) and set(np.unique(labels).tolist()) <= {0, 1, 255}
    assert (run_dir / "pseudo_labels" / "round_2" / "preview_z000.png").is_file()
    pseudo = np.loadtxt(run_dir / "pseudo_labels" / "round_2" / "pseudo_points.csv", delimiter=",", skiprows=1, ndmin=2)
    assert pseudo.shape[1] == 3
    assert (run_dir / "model.pt").is_file()


class _FixedOutput(torch.nn.Module):
    """A stand-in network whose output is a fixed (1, 3, H, W) tensor, whatever the input."""

    def __init__(self, output: torch.Tensor) -> None:
        super().__init__()
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output


def _round_labels(tmp_path: Path, density_confirms_background: bool) -> np.ndarray:
    """Labels of one IPL round on a 64x64 slice: a confident disk at (16, 16) holding a ground-truth point, and
    a density peak at (46, 46) where the segmentation is unsure (p = 0.1), i.e. a mitochondrion it missed."""
    from bundle.data.density import density_map
    from bundle.handlers import PseudoLabelRounds
    from bundle.pseudo_labels.rounds import RoundRule

    yy, xx = np.mgrid[:64, :64]
    probability = np.where((yy - 16) ** 2 + (xx - 16) ** 2 <= 36, 0.9, 0.1)
    logits = np.stack([np.zeros_like(probability), np.log(probability / (1 - probability))])
    density = density_map(np.array([[16, 16], [46, 46]]), (64, 64), sigma=3.0)
    output = torch.as_tensor(np.concatenate([logits, density[None]]), dtype=torch.float32)[None]
    items = [{"image": np.zeros((1, 64, 64), np.float32)}]
    rule = RoundRule(omega_fractions=[0.0], sigma=3.0, beta=0.0, density_confirms_background=density_confirms_background)
    rounds = PseudoLabelRounds(
        items, _FixedOutput(output), lambda x, net: net(x), tmp_path / f"pl_{density_confirms_background}",
        gt_points=np.array([[0, 16, 16]]), num_rounds=1, rule=rule, tta_views=1,
    )  # fmt: skip
    rounds.run_round()
    assert rounds.round == 1 and items[0]["label"].shape == (1, 64, 64)
    return items[0]["label"][0]


def test_density_confirms_background(tmp_path: Path) -> None:
    plain = _round_labels(tmp_path, density_confirms_background=False)
    checked = _round_labels(tmp_path, density_confirms_background=True)
    assert plain[16, 16] == checked[16, 16] == 1  # the disk with a ground-truth point is an instance
    assert plain[46, 46] == 0  # p = 0.1: background for IPL alone ...
    assert checked[46, 46] == 255  # ... but the density head sees an instance there: ignored
    assert plain[2, 60] == checked[2, 60] == 0  # far from both peaks: background either way


def test_resume_skips_a_checkpoint_truncated_while_saving(tmp_path: Path) -> None:
    from ignite.engine import Engine

    network = torch.nn.Linear(2, 1)
    trainer = Engine(lambda engine, batch: None)
    trainer.state.epoch, trainer.state.iteration, trainer.state.epoch_length, trainer.state.max_epochs = 1, 4, 4, 3
    torch.save({"model": network.state_dict(), "trainer": trainer.state_dict()}, tmp_path / "checkpoint_epoch=1.pt")
    whole = (tmp_path / "checkpoint_epoch=1.pt").read_bytes()
    (tmp_path / "checkpoint_epoch=2.pt").write_bytes(whole[: len(whole) // 2])  # killed halfway through saving
    assert not readable(tmp_path / "checkpoint_epoch=2.pt")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint_epoch=1.pt"
    fresh = Engine(lambda engine, batch: None)
    restored = torch.nn.Linear(2, 1)
    ResumeFromLatest(tmp_path, {"model": restored, "trainer": fresh})(fresh)
    assert fresh.state.iteration == 4
    torch.testing.assert_close(restored.weight, network.weight)


@pytest.mark.parametrize("fixed_count", [False, True])
def test_fixed_count_keeps_the_first_rounds_count(tmp_path: Path, fixed_count: bool) -> None:
    """A density head that doubles its mass between rounds doubles the new pseudo-points, unless counts are fixed."""
    import json

    from bundle.data.density import density_map
    from bundle.handlers import PseudoLabelRounds
    from bundle.pseudo_labels.rounds import RoundRule

    centres = np.array([[12, 12], [12, 52], [52, 12], [52, 52]])
    network = _FixedOutput(None)

    def show(num_instances: int) -> None:
        """Let the network predict `num_instances` of the four Gaussians (and background everywhere)."""
        density = density_map(centres[:num_instances], (64, 64), sigma=3.0)
        logits = np.stack([np.zeros((64, 64)), np.full((64, 64), -5.0)])
        network.output = torch.as_tensor(np.concatenate([logits, density[None]]), dtype=torch.float32)[None]

    def make_rounds() -> PseudoLabelRounds:
        items = [{"image": np.zeros((1, 64, 64), np.float32)}]
        rule = RoundRule(beta=0.5, omega_fractions=[0.0, 0.0], sigma=3.0, peak_min_distance=5)
        return PseudoLabelRounds(
            items, network, lambda x, net: net(x), tmp_path / f"pl_{fixed_count}", num_rounds=2, rule=rule,
            tta_views=1, fixed_count=fixed_count,
        )  # fmt: skip

    rounds = make_rounds()
    show(2)
    rounds.run_round()  # count 2: round(0.5 × 2) = 1 new point
    assert len(rounds.pseudo[0]) == 1
    resumed = make_rounds()
    resumed.load_state_dict(rounds.state_dict())  # the fixed counts travel with the checkpoint
    show(4)
    resumed.run_round()  # count 4 now: 2 more points, or 1 with the first round's count
    assert len(resumed.pseudo[0]) == (2 if fixed_count else 3)
    summary = json.loads((tmp_path / f"pl_{fixed_count}" / "round_1" / "summary.json").read_text())
    assert summary["estimated_count"] == pytest.approx(2.0 if fixed_count else 4.0, abs=0.05)


@pytest.mark.parametrize(
    "end, end_iteration, expected",
    [(1.0, None, [1.0, 1.0, 1.0, 1.0]), (0.0, None, [0.75, 0.5, 0.25, 0.0]), (0.0, 2, [0.5, 0.0, 0.0, 0.0])],
)
def test_the_source_weight_schedule_of_adapt_wda(end: float, end_iteration: int | None, expected: list[float]) -> None:
    """adapt_wda.yaml's schedule sets AdaptationLoss.source_weight at each iteration's start from the iteration
    number: constant 1 by default (the paper), linear to `source_weight_end` at the last iteration or at
    `source_weight_end_iteration`, then held; the source part of the loss is weighted by it and its logged terms stay
    unweighted."""
    from ignite.engine import Engine

    parser = ConfigParser()
    parser.read_config([str(REPO / "configs" / f"{name}.yaml") for name in ("train", "finetune", "adapt_wda")])
    parser.update({"num_iterations": 4, "source_weight_end": end})
    if end_iteration is not None:
        parser.update({"source_weight_end_iteration": end_iteration})
    loss_fn, schedule = parser.get_parsed_content("adaptation_loss"), parser.get_parsed_content("source_weight")
    pred = torch.zeros(2, 3, 4, 4)
    targets = {"label": torch.ones(2, 1, 4, 4), "density": torch.zeros(2, 1, 4, 4), "num_source": torch.tensor(1)}
    seen = []
    engine = Engine(lambda engine, batch: seen.append((loss_fn.source_weight, float(loss_fn(pred, targets)))))
    schedule.attach(engine)
    engine.run([0] * 4, max_epochs=1)
    assert [weight for weight, _ in seen] == pytest.approx(expected)
    assert [value for _, value in seen] == pytest.approx([(1 + w) * np.log(2) for w in expected], rel=1e-5)
    assert loss_terms_transform(loss_fn)(None)["loss_terms/source/ce"] == pytest.approx(np.log(2), rel=1e-5)


def test_source_lambda_density_weights_the_source_density_term_only() -> None:
    """adapt_wda.yaml's `source_lambda_density` is the density L2's weight in the source part: 0 leaves the source
    batches' segmentation term and the target's density term; the unweighted source density is still logged."""
    parser = ConfigParser()
    parser.read_config([str(REPO / "configs" / f"{name}.yaml") for name in ("train", "finetune", "adapt_wda")])
    parser.update({"source_lambda_density": 0.0})
    loss_fn = parser.get_parsed_content("adaptation_loss")
    pred = torch.zeros(2, 3, 4, 4)
    pred[:, 2] = 0.001  # density 0.001 * scale 1000 against 0: an L2 of 1 in each part
    targets = {"label": torch.ones(2, 1, 4, 4), "density": torch.zeros(2, 1, 4, 4), "num_source": torch.tensor(1)}
    assert float(loss_fn(pred, targets)) == pytest.approx(2 * np.log(2) + 1.0, rel=1e-5)  # CE twice, target density
    terms = loss_terms_transform(loss_fn)(None)
    assert terms["loss_terms/source/density"] == pytest.approx(1.0) == terms["loss_terms/target/density"]


@pytest.mark.parametrize("key, value", [("source_weight_end", "-1"), ("source_weight_end_iteration", "'late'"),
                                        ("source_lambda_density", "-0.5")])  # fmt: skip
def test_a_bad_loss_value_stops_before_any_output(key: str, value: str, crops: dict[str, Path], tmp_path: Path) -> None:
    """adapt_wda.yaml's `prepare` checks the source weight schedule and the density weights: one line, nothing
    written (ParamSchedulerHandler would fail mid-run)."""
    out = tmp_path / "run"
    assert_one_line_error(run_bundle(*adapt_command(crops, out, 2)[4:], f"--{key}", value), key, f"--{key}")
    assert not out.exists()


def test_class_prior_weights_give_the_labelled_pixels_the_prior() -> None:
    """Weighted, the labelled foreground carries the prior's share of the labelled pixels' weight; the mean weight of a
    labelled pixel stays 1; a label map without one of the classes is left unweighted."""
    from bundle.pseudo_labels.rounds import class_prior_weights

    labels = np.full((10, 100), 255, np.uint8)
    labels[:, :2] = 1  # 2 % of the pixels labelled foreground
    labels[:, 30:] = 0  # 70 % background, the rest ignored
    background, foreground = class_prior_weights(labels, 0.1)
    fg, bg = (labels == 1).sum(), (labels == 0).sum()
    assert foreground * fg / (foreground * fg + background * bg) == pytest.approx(0.1)
    assert (foreground * fg + background * bg) / (fg + bg) == pytest.approx(1.0)
    assert foreground / background == pytest.approx((0.1 / 0.02) / (0.9 / 0.7))
    assert class_prior_weights(np.zeros((4, 4), np.uint8), 0.1) == (1.0, 1.0)


def test_weighted_cross_entropy_is_torchs_class_weighted_mean_per_sample() -> None:
    import torch.nn.functional as F

    from bundle.losses.multitask import IGNORE_INDEX, weighted_cross_entropy

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 8, 8, generator=generator)
    label = torch.randint(0, 2, (2, 8, 8), generator=generator)
    label[:, :2] = IGNORE_INDEX
    same = torch.tensor([[0.5, 4.0], [0.5, 4.0]])
    expected = F.cross_entropy(logits, label, weight=same[0], ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(weighted_cross_entropy(logits, label, same, IGNORE_INDEX), expected)
    plain = F.cross_entropy(logits, label, ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(weighted_cross_entropy(logits, label, torch.ones(2, 2), IGNORE_INDEX), plain)
    # per sample: the second sample's foreground counts 4 times, and a zero weight drops the first sample
    only_second = torch.tensor([[0.0, 0.0], [1.0, 4.0]])
    expected = F.cross_entropy(logits[1:], label[1:], weight=only_second[1], ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(weighted_cross_entropy(logits, label, only_second, IGNORE_INDEX), expected)
    # MultiTaskLoss weighs its cross-entropy with a target's class weights (no density term here: λ1 = 0)
    from bundle.losses import MultiTaskLoss

    pred = torch.cat([logits, torch.zeros(2, 1, 8, 8)], dim=1)
    target = {"label": label[:, None], "density": torch.zeros(2, 1, 8, 8), "class_weights": only_second}
    torch.testing.assert_close(MultiTaskLoss(lambda_density=0.0)(pred, target), expected)


def test_the_class_prior_is_the_first_rounds_foreground_share_and_weighs_every_round(tmp_path: Path) -> None:
    """With match_class_prior the first round takes the starting model's predicted foreground share as the prior,
    every round's items carry the weights that give their labels that share, the prior travels with the checkpoint,
    and the paired batch hands the weights to the loss (1, 1 for a source part)."""
    import json

    from bundle.data.paired import prepare_paired_batch
    from bundle.handlers import PseudoLabelRounds
    from bundle.pseudo_labels.rounds import RoundRule, class_prior_weights

    probability = np.full((64, 64), 0.02)
    probability[8:24, 8:24] = 0.95  # a clicked mitochondrion: 256 px
    probability[40:56, 40:56] = 0.95  # and one without a click, ignored by IPL (Ω = 0): 512 px predicted in all
    logits = np.stack([np.zeros((64, 64)), np.log(probability / (1 - probability))])
    network = _FixedOutput(torch.as_tensor(np.concatenate([logits, np.zeros((1, 64, 64))]), dtype=torch.float32)[None])

    def make_rounds(match: bool) -> PseudoLabelRounds:
        items = [{"image": np.zeros((1, 64, 64), np.float32)}]
        rule = RoundRule(beta=0.0, omega_fractions=[0.0, 0.0], sigma=3.0, peak_min_distance=5, match_class_prior=match)
        return PseudoLabelRounds(items, network, lambda x, net: net(x), tmp_path / f"pl_{match}", num_rounds=2,
                                 gt_points=np.array([[0, 16, 16]]), rule=rule, tta_views=1)  # fmt: skip

    plain = make_rounds(False)
    plain.run_round()
    assert plain.class_prior is None and "class_weights" not in plain.items[0]  # off: the loss is unweighted
    rounds = make_rounds(True)
    rounds.run_round()
    assert rounds.class_prior == pytest.approx(512 / 64**2)
    labels = rounds.items[0]["label"][0]
    weights = rounds.items[0]["class_weights"]
    np.testing.assert_allclose(weights, class_prior_weights(labels, 512 / 64**2), rtol=1e-6)
    assert weights[1] > 1.9 * weights[0]  # 256 px labelled foreground for a prior of 512 px
    summary = json.loads((tmp_path / "pl_True" / "round_0" / "summary.json").read_text())
    assert summary["class_prior"] == pytest.approx(0.125) and summary["foreground_share"] == pytest.approx(0.125)
    resumed = make_rounds(True)
    resumed.load_state_dict(rounds.state_dict())  # the prior and the installed weights travel with the checkpoint
    assert resumed.class_prior == rounds.class_prior
    np.testing.assert_allclose(resumed.items[0]["class_weights"], weights)
    network.output[:, 1] = -10.0  # the adapted model predicts no foreground: the prior stays the first round's
    resumed.run_round()
    assert resumed.class_prior == rounds.class_prior
    target = {k: torch.as_tensor(np.asarray(v))[None] for k, v in resumed.items[0].items()}
    source = {k: v for k, v in target.items() if k not in ("class_weights", "point_mask", "density_mask")}
    _, batch = prepare_paired_batch({"source": source, "target": target})
    torch.testing.assert_close(batch["class_weights"], torch.stack([torch.ones(2), target["class_weights"][0]]))

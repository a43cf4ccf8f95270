"""scripts/finetune.py and source-free adaptation: one-line errors for bad input, the target-only loss path, fixed
source prototypes in the bank, and a tiny end-to-end run on synthetic volumes."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from bundle.data.paired import PairedDataset, prepare_paired_batch
from bundle.data.points import write_points
from bundle.handlers import PrototypeBank
from bundle.inference import FeatureInferer
from bundle.losses import (
    AdaptationLoss,
    ClassFocusedContrastLoss,
    ContrastiveAdaptationLoss,
    MultiTaskLoss,
    loss_terms_transform,
)
from bundle.networks import MultiTaskUNet
from tests.helpers import REPO

WIDTH, SIZE = 8, 64  # a tiny network on 64x64 slices
CENTRES = [(16, 16), (44, 40)]


def _script(name: str):
    """Import scripts/<name>.py as a module."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _synthetic(seed: int, depth: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 image, uint16 instances) of `depth` noisy 64x64 slices, each with two dark disks (EM contrast)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    instances = np.zeros((depth, SIZE, SIZE), np.uint16)
    for i, (y, x) in enumerate(CENTRES, start=1):
        instances[:, (yy - y) ** 2 + (xx - x) ** 2 <= 49] = i
    image = np.clip(170 - 80 * (instances > 0) + rng.normal(0, 15, instances.shape), 0, 255).astype(np.uint8)
    return image, instances


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Synthetic source and target volumes, target points, an untrained width-8 checkpoint and its prototypes."""
    root = tmp_path_factory.mktemp("finetune")
    paths = {name: root / f"{name}.tif" for name in ("source_image", "source_label", "target_image")}
    (source, labels), (target, _) = _synthetic(0), _synthetic(1)
    for name, array in zip(paths, (source, labels, target)):
        tifffile.imwrite(paths[name], array, photometric="minisblack")
    paths["points"] = root / "points.csv"
    write_points(paths["points"], np.array([[0, *CENTRES[0]], [1, *CENTRES[1]]]))
    torch.manual_seed(0)
    paths["checkpoint"] = root / "source.pt"
    torch.save(MultiTaskUNet(width=WIDTH).state_dict(), paths["checkpoint"])
    paths["prototypes"] = root / "prototypes.pt"
    argv = ["--checkpoint", paths["checkpoint"], "--source_image", paths["source_image"], "--source_label",
            paths["source_label"], "--width", WIDTH, "--tile", SIZE, "--delta_easy", 0,
            "--output", paths["prototypes"]]  # fmt: skip
    assert _script("source_prototypes").main([str(a) for a in argv]) == 0
    return {"root": root, **paths}


def finetune_argv(inputs: dict[str, Path], output_dir: Path, iterations: int = 4) -> list[str]:
    """A tiny source-free run: 2 epochs of 2 iterations, one pseudo-label round each, 64x64 crops."""
    return [
        "--target_image", str(inputs["target_image"]), "--points", str(inputs["points"]),
        "--output_dir", str(output_dir),
        "--checkpoint", str(inputs["checkpoint"]), "--source_prototypes", str(inputs["prototypes"]),
        "--num_iterations", str(iterations), "--val_interval", "2", "--num_rounds", "2",
        "--width", str(WIDTH), "--crop_size", f"[{SIZE},{SIZE}]", "--batch_size", "1", "--num_workers", "0",
        "--tta_views", "1",
    ]  # fmt: skip


def _bad(tmp_path: Path, case: str, inputs: dict[str, Path]) -> tuple[list[str], Path, str]:
    """(argv, output dir, file the message must name) of one bad-input case."""
    argv, output = finetune_argv(inputs, tmp_path / "out"), tmp_path / "out"
    swap = lambda key, value: argv.__setitem__(argv.index(key) + 1, str(value))  # noqa: E731
    if case == "wrong_axes":  # a (Y, X, Z) stack: 64 "slices" of 64x2
        bad = tmp_path / "yxz.tif"
        tifffile.imwrite(bad, tifffile.imread(inputs["target_image"]).transpose(1, 2, 0), photometric="minisblack")
        swap("--target_image", bad)
    elif case == "other_volume":
        bad = tmp_path / "other.csv"
        write_points(bad, np.array([[0, 10, 10], [1, 500, 700]]))
        swap("--points", bad)
    elif case == "napari_2d":
        bad = tmp_path / "napari.csv"
        bad.write_text("index,axis-0,axis-1\n0,16.0,16.0\n")
        swap("--points", bad)
    elif case == "empty_points":
        bad = tmp_path / "empty.csv"
        bad.write_text("")
        swap("--points", bad)
    elif case == "output_is_file":
        bad = output = tmp_path / "out.txt"
        bad.write_text("not a folder")
        swap("--output_dir", bad)
    elif case == "prototypes_of_another_model":
        bad = tmp_path / "other_model.pt"
        torch.save(MultiTaskUNet(width=WIDTH).state_dict(), bad)
        swap("--checkpoint", bad)
        bad = inputs["prototypes"]
    return argv, output, bad.name


@pytest.mark.parametrize(
    "case", ["wrong_axes", "other_volume", "napari_2d", "empty_points", "output_is_file", "prototypes_of_another_model"]
)
def test_bad_input_one_line_and_no_output(case: str, inputs: dict[str, Path], tmp_path: Path, capsys) -> None:
    argv, output, name = _bad(tmp_path, case, inputs)
    existed = output.exists()
    with pytest.raises(SystemExit) as info:
        _script("finetune").main(argv)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "\n" not in err, err
    assert err.startswith("mitoda: error: ") and name in err, err
    assert output.exists() == existed and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "key, value",
    [("outline_margin", "-1"), ("outline_margin", "1.5"), ("outline_margin", "wide"), ("match_class_prior", "yes"),
     ("snap_to_membranes", "1"), ("source_weight_end", "-1"),
     ("source_weight_end", "half"), ("source_weight_end_iteration", "-5"), ("source_weight_end_iteration", "True"),
     ("source_lambda_density", "-1"), ("source_lambda_density", "none")],
)
def test_a_bad_rule_value_is_one_line_and_writes_nothing(key: str, value: str, inputs: dict[str, Path],
                                                         tmp_path: Path, capsys) -> None:  # fmt: skip
    argv = ["--target_image", str(inputs["target_image"]), "--points", str(inputs["points"]),
            "--output_dir", str(tmp_path / "out"), f"--{key}", value]  # fmt: skip
    if key.startswith("source_"):  # adapt_wda.yaml's keys: with source batches only
        argv += ["--with_source", "--dataset_dir", str(tmp_path / "data")]
    with pytest.raises(SystemExit) as info:
        _script("finetune").main(argv)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "\n" not in err and err.startswith(f"mitoda: error: --{key}"), err
    assert not (tmp_path / "out").exists()


def _target_batch() -> dict[str, torch.Tensor]:
    """One target sample of 32x32: a foreground square with a ground-truth point, background, an ignored band."""
    label = torch.zeros(1, 32, 32)
    label[:, 8:20, 8:20], label[:, :, 28:] = 1, 255
    point = torch.zeros(1, 32, 32)
    point[:, 8:20, 8:20] = 1
    return {"image": torch.randn(1, 32, 32), "label": label, "density": torch.zeros(1, 32, 32),
            "density_mask": torch.ones(1, 32, 32), "point_mask": point}  # fmt: skip


def test_source_free_loss_path(inputs: dict[str, Path]) -> None:
    dataset = PairedDataset(None, [_target_batch()])
    item = dataset[0]
    assert len(dataset) == 1 and list(item) == ["target"]
    images, targets = prepare_paired_batch({"target": {k: v[None] for k, v in item["target"].items()}})
    assert images.shape == (1, 1, 32, 32) and int(targets["num_source"]) == 0
    torch.manual_seed(0)
    network = MultiTaskUNet(width=WIDTH)
    bank = PrototypeBank(fixed_source_prototypes=inputs["prototypes"])
    fixed = bank.get("source_fg").clone()
    contrast = ClassFocusedContrastLoss(bank, delta_hard=0.8)
    loss_fn = ContrastiveAdaptationLoss(AdaptationLoss(MultiTaskLoss()), contrast, lambda_contrast=1.0)
    output, features = FeatureInferer()(images, network)
    loss = loss_fn((output, features), targets)
    plain = MultiTaskLoss()(output, {k: v for k, v in targets.items() if k != "num_source"})
    assert torch.isfinite(loss) and loss.item() > plain.item()  # the target loss alone + a positive L_contra
    # the terms the loss-term curves log: source-free, only the target part's, and L_contra; they add up to the loss
    terms = loss_terms_transform(loss_fn, prefix="")(None)
    assert terms.keys() == {"target/ce", "target/density", "contrast"}
    assert sum(terms.values()) == pytest.approx(loss.item(), rel=1e-5)  # λ1 = λ2 = 1
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in network.parameters())
    assert float(network.conv_0.conv_0.conv.weight.grad.abs().sum()) > 0
    assert torch.equal(bank.get("source_fg"), fixed) and "target_pl_fg" in bank.prototypes
    assert "source_fg" in bank.fixed and bank.last["fg"] is not None


def test_fixed_prototypes_checkpoint_round_trip(inputs: dict[str, Path], tmp_path: Path) -> None:
    bank = PrototypeBank(fixed_source_prototypes=inputs["prototypes"])
    fixed = {k: bank.get(k).clone() for k in ("source_fg", "source_bg")}
    bank.update({"source_fg": torch.randn(WIDTH), "source_bg": torch.randn(WIDTH), "target_pl_bg": torch.randn(WIDTH)})
    assert all(torch.equal(bank.get(k), v) for k, v in fixed.items()) and "target_pl_bg" in bank.prototypes
    torch.save({"prototypes": bank.state_dict()}, tmp_path / "checkpoint.pt")
    fresh = PrototypeBank()
    fresh.load_state_dict(torch.load(tmp_path / "checkpoint.pt", weights_only=True)["prototypes"])
    fresh.update({"source_fg": torch.randn(WIDTH), "target_pl_bg": torch.randn(WIDTH)})
    assert fresh.fixed == {"source_fg", "source_bg"} and all(torch.equal(fresh.get(k), v) for k, v in fixed.items())
    assert not torch.equal(fresh.get("target_pl_bg"), bank.get("target_pl_bg"))  # the others still update


def test_source_free_finetune_end_to_end(inputs: dict[str, Path], tmp_path: Path) -> None:
    output = tmp_path / "run"
    command = [sys.executable, str(REPO / "scripts" / "finetune.py"), *finetune_argv(inputs, output)]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert (output / "model.pt").is_file() and "pseudo-label round 2/2" in log
    for name in ("probability", "density", "instances"):
        assert tifffile.imread(output / "predictions" / f"{name}.tif").shape == (2, SIZE, SIZE)
    record = json.loads((output / "finetune.json").read_text())
    assert record["settings"]["validation"] is False and {"adapt", "predict", "total"} <= record["timings_s"].keys()
    saved = torch.load(output / "checkpoints" / "checkpoint_epoch=2.pt", weights_only=True)
    assert saved["prototypes"]["fixed"] == ["source_bg", "source_fg"]
    fixed = torch.load(inputs["prototypes"], weights_only=True)["source_fg"]
    assert torch.equal(saved["prototypes"]["prototypes"]["source_fg"], fixed)
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)  # the same command continues the run
    assert again.returncode == 0 and "resumed from" in again.stdout + again.stderr
    command = [*command[:2], *finetune_argv(inputs, output, iterations=6)]
    changed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert changed.returncode == 2 and "num_iterations" in changed.stderr and changed.stderr.count("\n") == 1


def test_held_out_clicks_are_split_off_scored_and_reported(inputs: dict[str, Path], tmp_path: Path) -> None:
    from bundle.data.points import read_points

    output = tmp_path / "run"
    assert _script("finetune").main([*finetune_argv(inputs, output), "--holdout_clicks", "0.5"]) == 0
    train, holdout = read_points(output / "inputs" / "train_clicks.csv"), read_points(output / "inputs" / "holdout_clicks.csv")
    everything = read_points(inputs["points"])
    assert len(train) == len(holdout) == 1
    assert sorted(map(tuple, [*train, *holdout])) == sorted(map(tuple, everything))  # a split, nothing lost
    record = json.loads((output / "finetune.json").read_text())
    assert record["settings"]["target_points"] == str(output / "inputs" / "train_clicks.csv")  # trained on: train only
    rounds = record["checks"]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and all(r["holdout_click_recall"] in (0.0, 1.0) for r in rounds)
    assert record["checks"]["final"]["holdout_clicks"] == 1


def test_no_clicks_is_unsupervised_adaptation(inputs: dict[str, Path], tmp_path: Path) -> None:
    output = tmp_path / "run"
    argv = finetune_argv(inputs, output)
    argv[argv.index("--points") + 1] = "none"
    assert _script("finetune").main(argv) == 0
    record = json.loads((output / "finetune.json").read_text())
    settings = record["settings"]
    assert settings["target_points"] is None and "holdout_points" not in settings  # no click file named, none made
    assert settings["configs"][-1] == "adapt_uda.yaml" and settings["omega_fractions"][0] == 0.5
    assert not (output / "inputs" / "train_clicks.csv").exists() and (output / "model.pt").is_file()
    summary = json.loads((output / "pseudo_labels" / "round_1" / "summary.json").read_text())
    assert summary["holdout_click_recall"] is None and record["checks"]["warning"] is None
    assert all(r["instance_count"] is not None for r in record["checks"]["rounds"])  # the count checks still run


def test_inverted_contrast_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    from bundle.data.target import check_polarity
    from bundle.errors import InputError
    from tests.helpers import EPFL, need

    image = tifffile.imread(need(EPFL / "training.tif"), key=[0, 3])
    clicks = np.loadtxt(need(EPFL / "points" / "15pct_split1.csv"), delimiter=",", skiprows=1, dtype=int)
    clicks = clicks[np.isin(clicks[:, 0], [0, 3])]
    clicks[:, 0] = (clicks[:, 0] == 3).astype(int)
    assert check_polarity(image, clicks, "epfl") < -0.5  # mitochondria darker than their slices
    with pytest.raises(InputError, match="contrast looks inverted"):
        check_polarity(255 - image, clicks, "inverted.tif")

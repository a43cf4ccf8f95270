"""End to end through `python -m monai.bundle`: train -> inference -> evaluate on real crops, resume, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import torch

from bundle.data.io import read_volume
from bundle.metrics.overlay import LEGEND_LINE_PX
from bundle.networks import MultiTaskUNet
from tests.helpers import assert_one_line_error, run_bundle

def train_args(crops: dict[str, Path], output_dir: Path, iterations: int) -> list[str]:
    """A tiny CPU run of configs/train.yaml on the crops."""
    return [
        "--config_file", "configs/train.yaml",
        "--dataset_dir", str(crops["root"]),
        "--source_image", str(crops["src_image"]), "--source_label", str(crops["src_label"]),
        "--val_image", str(crops["val_image"]), "--val_label", str(crops["val_label"]), "--val_slices", "all",
        "--output_dir", str(output_dir), "--num_iterations", str(iterations), "--val_interval", "2",
        "--batch_size", "2", "--crop_size", "[128,128]", "--num_workers", "0",
    ]  # fmt: skip


def mlflow_metrics(folder: Path) -> dict[str, float]:
    """The latest metrics of the one MLflow run that `--tracking mlflow` recorded in folder/mlruns.db."""
    import mlflow

    runs = mlflow.MlflowClient(f"sqlite:///{folder / 'mlruns.db'}").search_runs(["1"])  # MONAI's monai_experiment
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    return runs[0].data.metrics


def test_train_inference_evaluate_end_to_end(real_crops: dict[str, Path], tmp_path: Path) -> None:
    """The three configs run as a user would, each with `--tracking mlflow` (MONAI's MLFlowHandler on our engines)."""
    run_dir, pred_dir, score_dir = tmp_path / "run", tmp_path / "pred", tmp_path / "scores"
    result = run_bundle(*train_args(real_crops, run_dir, iterations=4), "--tracking", "mlflow")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "model.pt").is_file() and (run_dir / "checkpoints" / "checkpoint_epoch=2.pt").is_file()
    assert list(run_dir.glob("events.out.tfevents.*")), "TensorBoard logs missing"
    result = run_bundle(
        "--config_file", "configs/inference.yaml", "--input_image", str(real_crops["val_image"]),
        "--output_dir", str(pred_dir), "--checkpoint", str(run_dir / "model.pt"), "--tracking", "mlflow",
        "--threads", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "torch threads: 1 (--threads)" in result.stdout
    for name in ("probability.tif", "density.tif", "instances.tif"):
        assert read_volume(pred_dir / name).shape == (2, 256, 256)
    assert sorted(p.name for p in (pred_dir / "previews").iterdir()) == ["preview_z000.png", "preview_z001.png"]
    assert "found " in result.stdout and (pred_dir / "summary.json").is_file()  # the summary of an unlabelled run
    result = run_bundle(
        "--config_file", "configs/evaluate.yaml", "--prediction_dir", str(pred_dir),
        "--label", str(real_crops["val_label"]), "--slices", "all", "--output_dir", str(score_dir),
        "--image", str(real_crops["val_image"]), "--tracking", "mlflow",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((score_dir / "metrics.json").read_text())
    assert sorted(p.name for p in score_dir.glob("overlay_*.png")) == ["overlay_z000.png"]  # 22, 44: past 2 slices
    assert iio.imread(score_dir / "overlay_z000.png").shape == (256 + 2 * LEGEND_LINE_PX + 4, 256, 3)  # + legend
    for key in ("dice", "iou", "f1", "mcc", "map", "aji", "pq"):
        assert math.isfinite(metrics[key]), (key, metrics[key])
        assert key == "mcc" or 0.0 <= metrics[key] <= 1.0, (key, metrics[key])
        assert len(metrics["per_slice"][key]) == 2
    assert set(metrics["volume"]) == {"dice", "iou", "f1", "mcc", "map"}
    tracked = mlflow_metrics(run_dir), mlflow_metrics(pred_dir), mlflow_metrics(score_dir)
    assert {"train_loss", "val_dice", "val_pq"} <= set(tracked[0]) and tracked[1]["wall_s"] > 0
    assert all(tracked[2][key] == pytest.approx(metrics[key]) for key in ("dice", "iou", "aji", "pq"))


def test_killed_training_resumes_from_last_checkpoint(real_crops: dict[str, Path], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert run_bundle(*train_args(real_crops, run_dir, iterations=4)).returncode == 0
    first = torch.load(run_dir / "checkpoints" / "checkpoint_epoch=2.pt", weights_only=True)
    assert first["trainer"]["iteration"] == 4
    # the same command with a longer schedule (as after a kill at the epoch-2 checkpoint) continues from there
    result = run_bundle(*train_args(real_crops, run_dir, iterations=6))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stdout + result.stderr
    assert "Epoch: 1/3" not in result.stdout + result.stderr  # epochs 1-2 were not trained again
    final = torch.load(run_dir / "checkpoints" / "checkpoint_epoch=3.pt", weights_only=True)
    assert final["trainer"]["iteration"] == 6
    assert final["lr_scheduler"]["last_epoch"] == 6  # the poly schedule continued, not restarted


def test_verify_net_in_out() -> None:
    result = run_bundle(
        "network_def", "--meta_file", "configs/metadata.json", "--config_file", "configs/inference.yaml",
        command="verify_net_in_out",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "verified with no error" in result.stdout + result.stderr


def test_missing_data_root_stops_with_one_line(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run_bundle("--config_file", "configs/train.yaml", "--dataset_dir", str(tmp_path / "nope"), "--output_dir", str(out))
    assert_one_line_error(result, "nope", "--dataset_dir")
    assert not out.exists()


def test_shape_mismatch_stops_before_any_output(real_crops: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = train_args(real_crops, out, iterations=2)
    wrong = tmp_path / "wrong.tif"
    tifffile.imwrite(wrong, np.zeros((3, 256, 256), np.uint8), photometric="minisblack")
    args[args.index("--source_label") + 1] = str(wrong)
    assert_one_line_error(run_bundle(*args), "wrong.tif", "shape")
    assert not out.exists()


def test_inference_bad_inputs_write_nothing(real_crops: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "other.pt"
    torch.save(MultiTaskUNet(width=8).state_dict(), other)
    out = tmp_path / "pred"
    common = ["--config_file", "configs/inference.yaml", "--output_dir", str(out)]
    result = run_bundle(*common, "--input_image", str(real_crops["val_image"]), "--checkpoint", str(other))
    assert_one_line_error(result, "other.pt", "does not fit this network")
    result = run_bundle(*common, "--input_image", str(real_crops["val_image"]), "--checkpoint", str(tmp_path / "missing.pt"))
    assert_one_line_error(result, "missing.pt", "not found")
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.zeros((2, 64, 64, 3), np.uint8), photometric="rgb")
    torch.save(MultiTaskUNet(width=16).state_dict(), tmp_path / "ok.pt")
    result = run_bundle(*common, "--input_image", str(rgb), "--checkpoint", str(tmp_path / "ok.pt"))
    assert_one_line_error(result, "rgb.tif")
    empty = tmp_path / "empty.tif"
    tifffile.imwrite(empty, np.zeros((2, 64, 64), np.uint8), photometric="minisblack")
    result = run_bundle(*common, "--input_image", str(empty), "--checkpoint", str(tmp_path / "ok.pt"))
    assert_one_line_error(result, "empty.tif", "constant")
    assert not out.exists()
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    result = run_bundle("--config_file", "configs/inference.yaml", "--output_dir", str(a_file),
                        "--input_image", str(real_crops["val_image"]), "--checkpoint", str(tmp_path / "ok.pt"))  # fmt: skip
    assert_one_line_error(result, "a_file", "is a file")


def test_evaluate_mismatch_writes_nothing(real_crops: dict[str, Path], tmp_path: Path) -> None:
    pred = tmp_path / "pred"
    pred.mkdir()
    tifffile.imwrite(pred / "probability.tif", np.zeros((3, 256, 256), np.float32), photometric="minisblack")
    tifffile.imwrite(pred / "instances.tif", np.zeros((3, 256, 256), np.uint32), photometric="minisblack")
    out = tmp_path / "scores"
    result = run_bundle("--config_file", "configs/evaluate.yaml", "--prediction_dir", str(pred),
                        "--label", str(real_crops["val_label"]), "--slices", "all", "--output_dir", str(out))  # fmt: skip
    assert_one_line_error(result, "val_label.tif", "prediction has 3")
    assert not out.exists()

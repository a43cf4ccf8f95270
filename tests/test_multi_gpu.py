"""Multi-GPU configs on CPU: two gloo processes under torchrun, on the real crops of tests/test_adaptation.py."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bundle.data.io import read_volume
from tests.helpers import REPO
from tests.test_adaptation import adapt_command, crops  # noqa: F401 - `crops` is the module-scoped fixture

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
INSTALLED = re.compile(r"pseudo-label round (\d+) installed on rank (\d+): targets md5 ([0-9a-f]{32})")


def torchrun(bundle_command: list[str], config_files: str) -> str:
    """Run a `python -m monai.bundle ...` command on 2 CPU ranks with another --config_file; return its log."""
    args = bundle_command[bundle_command.index("-m") + 1 :]
    args[args.index("--config_file") + 1] = config_files
    result = subprocess.run([*TORCHRUN, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    return log


def test_adaptation_ranks_install_the_same_pseudo_labels(crops: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    run_dir = tmp_path / "run"
    configs = "['configs/train.yaml','configs/finetune.yaml','configs/adapt_wda.yaml','configs/multi_gpu_train.yaml']"
    log = torchrun(adapt_command(crops, run_dir, iterations=4), configs)
    installed: dict[int, dict[int, str]] = {}
    for round_, rank, md5 in INSTALLED.findall(log):
        installed.setdefault(int(round_), {})[int(rank)] = md5
    assert sorted(installed) == [1, 2], log[-4000:]
    for round_, by_rank in installed.items():
        assert sorted(by_rank) == [0, 1] and by_rank[0] == by_rank[1], (round_, by_rank)
    assert installed[1][0] != installed[2][0]  # the hash sees the change between rounds
    assert "pseudo-label round 1/4" in log and "pseudo-label round 3/4" not in log  # rank 0 computed rounds 1-2
    labels = read_volume(run_dir / "pseudo_labels" / "round_1" / "labels.tif")
    assert labels.shape == (2, 256, 256) and set(np.unique(labels).tolist()) <= {0, 1, 255}
    final = torch.load(run_dir / "checkpoints" / "checkpoint_epoch=2.pt", weights_only=True)
    assert final["trainer"]["iteration"] == 4 and int(final["pseudo_labels"]["round"]) == 2
    assert not any(key.startswith("module.") for key in final["model"])  # the DDP wrapper is not saved


def test_training_loss_goes_down(crops: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    run_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/train.yaml",
        "--dataset_dir", str(crops["root"]),
        "--source_image", str(crops["src_image"]), "--source_label", str(crops["src_label"]),
        "--val_image", str(crops["val_image"]), "--val_label", str(crops["val_label"]), "--val_slices", "all",
        "--output_dir", str(run_dir), "--num_iterations", "20", "--val_interval", "10", "--batch_size", "2",
        "--crop_size", "[128,128]", "--num_workers", "0",
    ]  # fmt: skip
    log = torchrun(command, "['configs/train.yaml','configs/multi_gpu_train.yaml']")
    assert log.count("Saved checkpoint at epoch:") == 2 and log.count("Epoch[1] Metrics") == 1  # rank 0 alone
    events = EventAccumulator(str(run_dir))
    events.Reload()
    losses = [scalar.value for scalar in events.Scalars("train_loss")]
    assert len(losses) == 20, losses  # rank 0 alone logs, once per iteration
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5]), losses
    model = torch.load(run_dir / "model.pt", weights_only=True)
    assert not any(key.startswith("module.") for key in model.get("model", model))

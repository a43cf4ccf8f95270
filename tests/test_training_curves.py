"""scripts/training_curves.py: the loss terms and prototype similarities a run logged, read back from TensorBoard."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter

from tests.helpers import REPO

spec = importlib.util.spec_from_file_location("training_curves", REPO / "scripts" / "training_curves.py")
curves = importlib.util.module_from_spec(spec)
spec.loader.exec_module(curves)


def _run(tmp_path: Path, name: str, values: dict[int, float]) -> Path:
    """A run folder whose events hold prototypes/cos_fg_vs_bg and loss_terms/target/ce at the given steps, and an
    unrelated scalar."""
    run = tmp_path / name
    writer = SummaryWriter(log_dir=str(run))
    for step, value in values.items():
        writer.add_scalar("prototypes/cos_fg_vs_bg", value, step)
        writer.add_scalar("loss_terms/target/ce", 2 * value, step)
        writer.add_scalar("train_loss", 9.0, step)
    writer.close()
    return run


def test_prints_window_means_and_the_nearest_steps(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = _run(tmp_path, "contrast", {50: 0.25, 100: -0.5, 400: 0.125})
    assert curves.read_scalars(run, ("prototypes/",)) == {"prototypes/cos_fg_vs_bg": [(50, 0.25), (100, -0.5), (400, 0.125)]}
    assert set(curves.read_scalars(run)) == {"prototypes/cos_fg_vs_bg", "loss_terms/target/ce"}
    assert curves.main([str(run), "--at", "40", "120", "1000", "--window", "0", "--prefix", "prototypes/"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "cos_fg_vs_bg" in line)
    assert row.split()[1:] == ["0.25", "-0.5", "0.125"]
    # window 100 at 100 averages steps 50 and 100; at 40 none lies in (-60, 40]: the nearest (50)
    assert curves.main([str(run), "--at", "40", "100", "--window", "100"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "loss_terms/target/ce" in line)
    assert row.split()[1:] == ["0.5", "-0.25"]
    assert "cos_fg_vs_bg" not in out  # only the default prefix


def test_a_run_without_the_scalars_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "plain"
    writer = SummaryWriter(log_dir=str(run))
    writer.add_scalar("train_loss", 1.0, 1)
    writer.close()
    assert curves.main([str(run)]) == 0
    assert "no loss_terms/* scalars" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        curves.main([str(tmp_path / "missing")])
    message = f"mitoda: error: {tmp_path / 'missing'}: not a folder; pass an adaptation run's --output_dir\n"
    assert capsys.readouterr().err == message

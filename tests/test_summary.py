"""What inference reports on a volume without labels (bundle/inference/summary.py): the summary (logged and in
summary.json) and the preview PNGs, in both prediction-folder layouts and through configs/inference.yaml."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import torch

from bundle.inference.prediction_folder import slice_writers
from bundle.inference.summary import preview_indices, summarize_prediction
from bundle.metrics.overlay import LEGEND_LINE_PX, OUTLINE_COLOURS
from bundle.networks import MultiTaskUNet
from tests.helpers import assert_one_line_error, raises_one_line, run_bundle


def _prediction(folder: Path, instances: np.ndarray) -> None:
    """A finished prediction folder (either layout, by its name) whose instances are `instances`."""
    with slice_writers(folder, instances.shape, pixel_size=None) as writers:
        for z, ids in enumerate(instances):
            for writer, page in zip(writers, ((ids > 0).astype(np.float32), np.zeros(ids.shape, np.float32), ids)):
                writer.write(z, page)


@pytest.fixture()
def case(tmp_path: Path) -> dict:
    """An 8-slice input and the instances of its slices 2-6: slice i has i + 1 squares of 10 x 10 pixels."""
    image = np.random.default_rng(0).integers(0, 255, (8, 60, 200), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "vol.tif", image, photometric="minisblack")
    instances = np.zeros((5, 60, 200), dtype=np.uint32)
    next_id = 1
    for i in range(5):
        for k in range(i + 1):
            instances[i, 5:15, 5 + 30 * k : 15 + 30 * k] = next_id
            next_id += 1
    return {"image": tmp_path / "vol.tif", "instances": instances, "count": next_id - 1}


@pytest.mark.parametrize("layout", ["pred", "pred.ome.zarr"])
def test_summary_counts_sizes_and_draws_the_first_middle_and_last_slice(case, tmp_path, layout, caplog) -> None:
    folder = tmp_path / layout
    _prediction(folder, case["instances"])
    with caplog.at_level(logging.INFO, logger="mitoda.summary"):
        summary = summarize_prediction(folder, case["image"], slices="2-6", pixel_size=(5.0, 4.0))
    assert summary["instances_2d"] == case["count"] == 15 and summary["slices"] == 5
    assert summary["mean_size_px"] == 100 and summary["mean_size_um2"] == pytest.approx(100 * 20e-6)
    assert summary["foreground_fraction"] == pytest.approx(15 * 100 / (5 * 60 * 200))
    assert summary["instances_3d"] is None
    assert json.loads((folder / "summary.json").read_text()) == json.loads(json.dumps(summary))
    names = sorted(p.name for p in (folder / "previews").iterdir())
    assert names == ["preview_z002.png", "preview_z004.png", "preview_z006.png"]  # input slice numbers
    rgb = iio.imread(folder / "previews" / "preview_z006.png")
    assert rgb.shape == (60 + 2 * LEGEND_LINE_PX + 4, 200, 3)
    assert tuple(rgb[5, 10]) == OUTLINE_COLOURS[11 % len(OUTLINE_COLOURS)]  # slice 6's first square is id 11
    assert any(m.startswith("found 15 instances in 5 slices") and "µm²" in m for m in caplog.messages), caplog.messages
    assert any(m.startswith("previews: ") for m in caplog.messages)


def test_large_slices_are_previewed_shrunk_and_none_is_drawn_with_zero(case, tmp_path) -> None:
    _prediction(tmp_path / "pred", case["instances"])
    summarize_prediction(tmp_path / "pred", case["image"], slices="2-6", previews=2, preview_px=64)
    rgb = iio.imread(tmp_path / "pred" / "previews" / "preview_z006.png")
    assert rgb.shape[1] == 50  # 200 px shown at 1/4 of the pixels, the smallest step within 64 px
    summary = summarize_prediction(tmp_path / "pred", case["image"], slices="2-6", previews=0)
    assert summary["previews"] == [] and summary["mean_size_um2"] is None
    raises_one_line(summarize_prediction, tmp_path / "pred", case["image"], previews=-1, name="--previews")


def test_preview_indices_are_evenly_spaced_with_both_ends() -> None:
    assert preview_indices(45, 3) == [0, 22, 44] and preview_indices(2, 3) == [0, 1] and preview_indices(5, 0) == []


def test_inference_config_prints_the_summary_and_leaves_previews(case, tmp_path) -> None:
    """configs/inference.yaml as a user runs it on an unlabelled volume; a new run replaces the previews;
    a bad --previews is one line before anything is written."""
    torch.manual_seed(0)
    torch.save({"model": MultiTaskUNet(width=4).state_dict()}, tmp_path / "tiny.pt")
    args = ["--config_file", "configs/inference.yaml", "--input_image", str(case["image"]), "--checkpoint",
            str(tmp_path / "tiny.pt"), "--width", "4", "--device", "$torch.device('cpu')"]  # fmt: skip
    out = tmp_path / "out"
    result = run_bundle(*args, "--output_dir", str(out), "--slices", "1-7", "--pixel_size", "5")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "found " in result.stdout and f"previews: {out / 'previews' / 'preview_z001.png'}" in result.stdout
    assert sorted(p.name for p in (out / "previews").iterdir()) == ["preview_z001.png", "preview_z004.png",
                                                                    "preview_z007.png"]  # fmt: skip
    assert json.loads((out / "summary.json").read_text())["pixel_size_nm"] == [5.0, 5.0]
    result = run_bundle(*args, "--output_dir", str(out), "--previews", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (out / "previews").exists() and json.loads((out / "summary.json").read_text())["slices"] == 8
    result = run_bundle(*args, "--output_dir", str(tmp_path / "bad"), "--previews", "many")
    assert_one_line_error(result, "--previews")
    assert not (tmp_path / "bad").exists()

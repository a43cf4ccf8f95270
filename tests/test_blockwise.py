"""Blockwise prediction on Dask (bundle/inference/blockwise.py) into OME-Zarr prediction folders: the same outputs as
one process, scored by evaluate, resumed after a failure or a SIGKILL without predicting the finished blocks again."""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
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
from monai.inferers import SlidingWindowInferer

from bundle.data.pixel_size import file_pixel_size
from bundle.errors import InputError, find_input_error
from bundle.inference import VolumePredictor
from bundle.inference import blockwise
from bundle.inference.blockwise import BlockwisePredictor
from bundle.inference.prediction_folder import UNFINISHED, prediction_path, read_prediction
from bundle.metrics.evaluate import evaluate_predictions
from bundle.networks import MultiTaskUNet
from tests.helpers import REPO, assert_one_line_error, raises_one_line, run_bundle

SHAPE = (7, 80, 96)
calls: list[int] = []  # slices predicted, by every in-process worker (LocalCluster processes=False)
fail_after: list[int] = []  # a predict_image call past this count raises: a run killed in its middle


def counting_predict_image(self: VolumePredictor, image: np.ndarray):
    """VolumePredictor.predict_image that counts its calls, and fails once `fail_after` calls are done."""
    if fail_after and len(calls) >= fail_after[0]:
        raise RuntimeError("simulated kill")
    calls.append(1)
    return original_predict_image(self, image)


original_predict_image = VolumePredictor.predict_image


@pytest.fixture()
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls.clear()
    fail_after.clear()
    monkeypatch.setattr(VolumePredictor, "predict_image", counting_predict_image)
    return calls


@pytest.fixture()
def volume(tmp_path: Path) -> Path:
    """A (7, 80, 96) 8-bit volume of blobs on noise, where the untrained network finds instances."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[: SHAPE[1], : SHAPE[2]]
    data = rng.normal(128, 20, SHAPE)
    for z in range(SHAPE[0]):
        for cy, cx in rng.integers(10, 70, (5, 2)):
            data[z][(yy - cy) ** 2 + (xx - cx) ** 2 < 64] -= 60
    path = tmp_path / "vol.tif"
    tifffile.imwrite(path, np.clip(data, 0, 255).astype(np.uint8), photometric="minisblack")
    return path


@pytest.fixture()
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    torch.save({"model": MultiTaskUNet(width=4).state_dict()}, path)
    return path


def _network(checkpoint: Path) -> MultiTaskUNet:
    network = MultiTaskUNet(width=4)
    network.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    return network


def _inferer() -> SlidingWindowInferer:
    return SlidingWindowInferer(roi_size=(64, 64), overlap=0.25, mode="gaussian")


def _blockwise(checkpoint: Path, **kwargs) -> BlockwisePredictor:
    settings = {"workers": 1, "block_slices": 2, "processes": False, "progress": False, **kwargs}
    return BlockwisePredictor(_network(checkpoint), checkpoint, _inferer(), **settings)


def _predictions(folder: Path) -> dict[str, np.ndarray]:
    return {name: read_prediction(folder, name) for name in ("probability", "density", "instances")}


def _assert_same(found: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    np.testing.assert_allclose(found["probability"], expected["probability"], atol=1e-5)
    np.testing.assert_allclose(found["density"], expected["density"], atol=1e-7)
    np.testing.assert_array_equal(found["instances"], expected["instances"])  # ids unique across the volume, too
    assert found["instances"].dtype == np.uint32


def test_blockwise_equals_one_process_and_is_scored_by_evaluate(volume, checkpoint, tmp_path, caplog) -> None:
    slices = [0, 2, 3, 4, 6]  # not one run: output slice i is input slice slices[i]
    single = VolumePredictor(_network(checkpoint), _inferer(), progress=False, pixel_size=(5.0, 5.0))
    single(volume, tmp_path / "tif", slices)
    single(volume, tmp_path / "one.ome.zarr", slices)
    expected = _predictions(tmp_path / "tif")
    assert expected["instances"].max() > 20 and np.unique(expected["instances"][0]).size > 3  # a real test
    _assert_same(_predictions(tmp_path / "one.ome.zarr"), expected)
    out = tmp_path / "blocks.ome.zarr"
    with caplog.at_level(logging.INFO, logger="mitoda.blockwise"):
        files = _blockwise(checkpoint, workers=2, pixel_size=(5.0, 5.0))(volume, out, slices)
    peaks = [m for m in caplog.messages if m.startswith("peak memory of each worker: ")]
    assert len(peaks) == 1 and peaks[0].count(" GB") == 2, caplog.messages  # a figure per worker
    assert sorted(files) == ["density", "instances", "probability"] and not (out / UNFINISHED).exists()
    _assert_same(_predictions(out), expected)
    for name in files:  # OME-Zarr images of one chunk per slice, with the input's pixel size
        level = json.loads((prediction_path(out, name) / "0" / ".zarray").read_text())
        assert level["chunks"] == [1, 80, 96], level
        assert file_pixel_size(prediction_path(out, name)) == (5.0, 5.0)
    label = np.where(expected["probability"] > 0.5, 1, 0).astype(np.uint8) * 255
    tifffile.imwrite(tmp_path / "label.tif", label, photometric="minisblack")
    scores = [evaluate_predictions(folder, tmp_path / "label.tif", tmp_path / f"scores_{folder.name}",
                                   overlay_slices=[]) for folder in (tmp_path / "tif", out)]  # fmt: skip
    assert scores[0]["dice"] > 0.99 and {k: v for k, v in scores[1].items() if k != "prediction_dir"} == {
        k: v for k, v in scores[0].items() if k != "prediction_dir"}  # fmt: skip


def test_local_cluster_workers_run_without_the_nannys_malloc_trim(checkpoint) -> None:
    """Dask's nannies set MALLOC_TRIM_THRESHOLD_=65536 in the workers they spawn, which halves the network's speed."""
    with _blockwise(checkpoint, processes=True)._client() as client:
        found = client.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_")
    assert len(found) == 1 and set(found.values()) == {None}, found


def test_workers_with_malloc_trim_are_warned(checkpoint, monkeypatch, caplog) -> None:
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")  # the in-process worker sees this environment
    with caplog.at_level(logging.WARNING, logger="mitoda.blockwise"), _blockwise(checkpoint)._client():
        pass
    assert any("MALLOC_TRIM_THRESHOLD_" in m and blockwise.TRIM_SETTING in m for m in caplog.messages), caplog.messages


def test_a_failed_run_resumes_without_predicting_its_finished_blocks(volume, checkpoint, counted, tmp_path) -> None:
    _blockwise(checkpoint)(volume, tmp_path / "whole.ome.zarr")
    expected = _predictions(tmp_path / "whole.ome.zarr")
    assert len(counted) == SHAPE[0]
    out = tmp_path / "out.ome.zarr"
    counted.clear()
    fail_after.append(3)  # blocks of 2 slices: the second block fails on its second slice
    with pytest.raises(RuntimeError, match="simulated kill"):
        _blockwise(checkpoint)(volume, out)
    done = sorted(p.stem for p in (out / UNFINISHED / "done").glob("*.json"))
    assert "0-1" in done and "2-3" not in done, done
    raises_one_line(evaluate_predictions, out, volume, tmp_path / "scores", name="unfinished")
    fail_after.clear()
    counted.clear()
    _blockwise(checkpoint)(volume, out)  # the same command again
    recorded = sum(int(b) - int(a) + 1 for a, b in (name.split("-") for name in done))
    assert len(counted) == SHAPE[0] - recorded  # only the blocks that were not recorded
    _assert_same(_predictions(out), expected)
    assert not (out / UNFINISHED).exists()


def test_another_prediction_into_an_unfinished_folder_starts_over(volume, checkpoint, counted, tmp_path) -> None:
    out = tmp_path / "out.ome.zarr"
    fail_after.append(3)
    with pytest.raises(RuntimeError):
        _blockwise(checkpoint)(volume, out)
    fail_after.clear()
    counted.clear()
    _blockwise(checkpoint, block_slices=3)(volume, out, "1-6")  # other blocks and slices: nothing is resumed
    assert len(counted) == 6 and read_prediction(out, "probability").shape == (6, 80, 96)
    counted.clear()
    fail_after.append(1)
    with pytest.raises(RuntimeError):
        _blockwise(checkpoint)(volume, out)
    fail_after.clear()
    VolumePredictor(_network(checkpoint), _inferer(), progress=False)(volume, out)  # one process: clears .blocks
    assert not (out / UNFINISHED).exists() and read_prediction(out, "instances").shape == SHAPE


def test_cluster_refuses_tiff_folders_and_images_in_one_line(volume, checkpoint, tmp_path, monkeypatch) -> None:
    raises_one_line(_blockwise(checkpoint), volume, tmp_path / "out", name="--output_dir out.ome.zarr")
    assert not (tmp_path / "out").exists()
    VolumePredictor(_network(checkpoint), _inferer(), progress=False)(volume, tmp_path / "vol.ome.zarr", [0])
    image = prediction_path(tmp_path / "vol.ome.zarr", "probability")
    raises_one_line(_blockwise(checkpoint), volume, image, name="is an OME-Zarr image")
    raises_one_line(VolumePredictor(_network(checkpoint), _inferer()), volume, image, name="is an OME-Zarr image")
    raises_one_line(_blockwise, checkpoint, block_slices=0, name="block_slices")
    raises_one_line(_blockwise, checkpoint, workers=1.5, name="workers")
    monkeypatch.setattr(blockwise, "CONNECT_TIMEOUT_S", 2)
    raises_one_line(_blockwise(checkpoint, scheduler="tcp://127.0.0.1:9"), volume, tmp_path / "x.ome.zarr",
                    name="no Dask scheduler answers")  # fmt: skip
    assert not (tmp_path / "x.ome.zarr").exists()


def test_a_scheduler_that_cannot_import_bundle_is_one_line(volume, checkpoint, tmp_path) -> None:
    """A `dask scheduler` started without PYTHONPATH=REPO would fail to unpickle the tasks, in a long traceback."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    scheduler = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--port", "0",
                                  "--no-dashboard", "--scheduler-file", str(tmp_path / "scheduler.json")],
                                 cwd=tmp_path, env=env, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "scheduler.json").is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # the file is written whole before the scheduler listens
        address = json.loads((tmp_path / "scheduler.json").read_text())["address"]
        raises_one_line(_blockwise(checkpoint, scheduler=address), volume, tmp_path / "out.ome.zarr",
                        name="cannot import bundle.inference.blockwise")  # fmt: skip
        assert not (tmp_path / "out.ome.zarr").exists()
    finally:
        scheduler.kill()
        scheduler.wait()


def test_missing_dask_is_one_line_naming_the_cluster_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if `bash scripts/setup.sh cluster` had not run
    monkeypatch.delitem(sys.modules, "bundle.inference.blockwise")
    with pytest.raises(ImportError) as info:
        importlib.import_module("bundle.inference.blockwise")
    try:
        raise RuntimeError("Failed to instantiate the predictor") from info.value  # as MONAI wraps it
    except RuntimeError as wrapped:
        error = find_input_error(wrapped)
    assert isinstance(error, InputError) and "\n" not in str(error), error
    assert "bash scripts/setup.sh cluster" in str(error), error


def _chunk_times(folder: Path, blocks: list[str]) -> dict[str, int]:
    """mtime (ns) of the probability chunk of every slice of `blocks` (FIRST-LAST names)."""
    slices = [z for name in blocks for z in range(int(name.split("-")[0]), int(name.split("-")[1]) + 1)]
    return {f"{z}.0.0": (prediction_path(folder, "probability") / "0" / f"{z}.0.0").stat().st_mtime_ns for z in slices}


def test_a_killed_config_run_goes_on_with_the_same_command_on_a_running_cluster(checkpoint, tmp_path) -> None:
    """configs/inference_cluster.yaml as a user runs it, SIGKILLed in its middle, then run again with --scheduler
    (a running cluster): the output of an uninterrupted run, and the blocks recorded before the kill untouched."""
    from distributed import LocalCluster

    rng = np.random.default_rng(1)
    big = rng.integers(0, 255, (48, 256, 256), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "big.tif", big, photometric="minisblack")
    args = ["--config_file", "['configs/inference.yaml','configs/inference_cluster.yaml']",
            "--input_image", str(tmp_path / "big.tif"), "--checkpoint", str(checkpoint), "--width", "4",
            "--device", "$torch.device('cpu')", "--block_slices", "2"]  # fmt: skip
    parser = ConfigParser()
    parser.read_config(str(REPO / "configs" / "inference.yaml"))
    parser.update({"input_image": str(tmp_path / "big.tif"), "output_dir": str(tmp_path / "whole.ome.zarr"),
                   "checkpoint": str(checkpoint), "width": 4, "device": "$torch.device('cpu')"})  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the one-thread workers: OpenVINO's sums (--runtime auto) depend on the thread count
    try:
        parser.get_parsed_content("run")  # uninterrupted, one process
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "out.ome.zarr"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "monai.bundle", "run", *args, "--output_dir", str(out), "--workers", "1"]
    process = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)  # fmt: skip
    done_dir, deadline = out / UNFINISHED / "done", time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline and len(list(done_dir.glob("*.json"))) < 2:
        time.sleep(0.005)
    with contextlib.suppress(ProcessLookupError):  # (a run that ended first fails the assertion below)
        os.killpg(process.pid, signal.SIGKILL)  # the client, its scheduler and its worker processes
    process.wait()
    done = sorted(p.stem for p in done_dir.glob("*.json"))
    assert 2 <= len(done) < 24, (done, process.stderr.read().decode()[-3000:])
    before = _chunk_times(out, done)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp://",
                      dashboard_address=None) as cluster:  # fmt: skip
        result = run_bundle(*args, "--output_dir", str(out), "--scheduler", cluster.scheduler_address)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _chunk_times(out, done) == before  # the blocks finished before the kill were not predicted again
    _assert_same(_predictions(out), _predictions(tmp_path / "whole.ome.zarr"))
    assert not (out / UNFINISHED).exists()


def test_a_tiff_folder_through_the_cluster_config_is_one_line(volume, checkpoint, tmp_path) -> None:
    result = run_bundle("--config_file", "['configs/inference.yaml','configs/inference_cluster.yaml']",
                        "--input_image", str(volume), "--output_dir", str(tmp_path / "out"), "--checkpoint",
                        str(checkpoint), "--width", "4", "--workers", "1")  # fmt: skip
    assert_one_line_error(result, "blockwise prediction writes OME-Zarr", "out.ome.zarr")
    assert not (tmp_path / "out").exists()

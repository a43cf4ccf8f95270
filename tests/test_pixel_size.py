"""Pixel size: read from files, resampling to the model's scale and back (labels round-trip, the count is kept); the
z spacing of the predicted slices."""

from __future__ import annotations

from pathlib import Path

import h5py
import mrcfile
import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch
from monai.inferers import SlidingWindowInferer

from bundle.data.io import read_volume
from bundle.data.pixel_size import (
    MODEL_PIXEL_SIZE,
    as_pixel_size,
    file_pixel_size,
    model_scale,
    resample_volume,
    scale_pixel_size,
    scale_points,
    stated_z_spacing,
)
from bundle.inference.predict import VolumePredictor
from bundle.networks import MultiTaskUNet
from tests.helpers import EPFL, REPO, need, raises_one_line


def test_a_label_volume_round_trips_through_the_model_scale() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 50, size=(3, 40, 60)).astype(np.uint16)
    up = resample_volume(labels, (2.0, 2.0), labels=True)
    assert up.shape == (3, 80, 120) and up.dtype == np.uint16
    assert set(np.unique(up)) <= set(np.unique(labels))  # nearest: no new ids
    np.testing.assert_array_equal(resample_volume(up, (0.5, 0.5), labels=True), labels)
    odd = resample_volume(labels, (1.74, 1.74), labels=True)
    assert odd.shape == (3, 70, 104)
    np.testing.assert_array_equal(resample_volume(odd, (40 / 70, 60 / 104), labels=True), labels)


def test_points_follow_the_resampling() -> None:
    points = np.array([[0, 0, 0], [1, 10, 20], [2, 39, 59]])
    moved = scale_points(points, (2.0, 2.0), (80, 120))
    np.testing.assert_array_equal(moved, [[0, 1, 1], [1, 21, 41], [2, 79, 119]])  # pixel centres kept


def test_pixel_size_is_read_from_the_files_that_state_it(tmp_path: Path) -> None:
    volume = np.zeros((2, 32, 32), np.uint8)
    tifffile.imwrite(tmp_path / "ome.tif", volume, ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeX": 8, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 6, "PhysicalSizeYUnit": "nm"})  # fmt: skip
    assert file_pixel_size(tmp_path / "ome.tif") == pytest.approx((6, 8))
    tifffile.imwrite(tmp_path / "ij.tif", volume, imagej=True, resolution=(1 / 0.008, 1 / 0.008), metadata={"unit": "um"})
    assert file_pixel_size(tmp_path / "ij.tif") == pytest.approx((8, 8))
    tifffile.imwrite(tmp_path / "cm.tif", volume, resolution=(1e7 / 5, 1e7 / 5), resolutionunit="CENTIMETER")
    assert file_pixel_size(tmp_path / "cm.tif") == pytest.approx((5, 5))
    image = nib.Nifti1Image(volume.T.astype(np.float32), np.diag([0.007, 0.006, 0.05, 1]))  # nibabel's (x, y, z)
    image.header.set_xyzt_units("micron")
    nib.save(image, tmp_path / "vol.nii.gz")
    assert read_volume(tmp_path / "vol.nii.gz").shape == volume.shape
    assert file_pixel_size(tmp_path / "vol.nii.gz") == pytest.approx((6, 7))  # (y, x), not z
    with h5py.File(tmp_path / "vol.h5", "w") as handle:
        handle.create_dataset("raw", data=volume).attrs["element_size_um"] = (0.04, 0.01, 0.01)
    assert file_pixel_size(tmp_path / "vol.h5") == pytest.approx((10, 10))
    assert file_pixel_size(need(EPFL / "training.tif")) is None  # states none (its resolution tags are placeholders)


def test_the_scale_comes_from_the_option_then_the_file_then_the_model(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "ij.tif", np.zeros((2, 32, 32), np.uint8), imagej=True,
                     resolution=(1 / 0.0092, 1 / 0.0092), metadata={"unit": "um"})  # fmt: skip
    assert model_scale(tmp_path / "ij.tif") == pytest.approx((2, 2))
    assert model_scale(tmp_path / "ij.tif", "4.6,13.8") == pytest.approx((1, 3))
    assert model_scale(need(EPFL / "training.tif")) == (1.0, 1.0)
    assert model_scale(None, 5.0) == (1.0, 1.0)  # EPFL's 5 nm is within the tolerance: not resampled
    assert as_pixel_size("8") == as_pixel_size(8) == as_pixel_size([8]) == (8.0, 8.0)
    for bad in ("x", 0, -3, [1, 2, 3], True):
        raises_one_line(as_pixel_size, bad, name="not a pixel size")


def test_a_viewer_layer_scale_is_a_pixel_size_in_nm() -> None:
    """napari's default scale 1 is unknown (the file's or the model's); numbers without a unit are nm."""
    assert scale_pixel_size([1, 1, 1]) is None and scale_pixel_size([1, 1, 1], ["pixel"] * 3) is None
    assert scale_pixel_size([5, 5, 5]) == (5.0, 5.0) and scale_pixel_size([40, 8, 6], ["nm"] * 3) == (8.0, 6.0)
    assert scale_pixel_size([1, 0.008, 0.008], ["pixel", "micrometer", "micrometer"]) == (8.0, 8.0)
    assert scale_pixel_size([1, 1, 1], ["nm", "µm", "µm"]) == (1000.0, 1000.0)  # a unit: scale 1 is a size
    raises_one_line(scale_pixel_size, [1, 1, 1], ["s", "s", "s"], name="layer scale")
    raises_one_line(scale_pixel_size, [1, -2, 2], name="layer scale")


def test_the_z_spacing_comes_from_the_option_then_the_file_times_the_slice_step(tmp_path: Path, caplog) -> None:
    with mrcfile.new(tmp_path / "tomo.mrc") as mrc:
        mrc.set_data(np.zeros((12, 8, 8), np.int16))
        mrc.voxel_size = (50.0, 50.0, 100.0)  # x, y, z in Å: 10 nm between slices
    tomo = tmp_path / "tomo.mrc"
    assert stated_z_spacing(tomo, 7.5, "0-11:3") == (7.5, "--z_spacing")  # given: as it is, whatever the slices
    assert stated_z_spacing(tomo) == (pytest.approx(10), "tomo.mrc's metadata")
    assert stated_z_spacing(tomo, slices="2-9") == (pytest.approx(10), "tomo.mrc's metadata")
    assert stated_z_spacing(tomo, slices="4")[0] == pytest.approx(10)  # one slice: its own thickness
    spacing, source = stated_z_spacing(tomo, slices="0-11:3")
    assert spacing == pytest.approx(30) and source == "tomo.mrc's metadata, times the --slices step 3"
    assert stated_z_spacing(tomo, slices=[9, 6, 3])[0] == pytest.approx(30)
    caplog.set_level("INFO", logger="mitoda.pixel_size")
    caplog.clear()
    assert stated_z_spacing(tomo, slices="0,1,5") == (None, "")
    lines = [r.getMessage() for r in caplog.records if r.name == "mitoda.pixel_size"]
    assert len(lines) == 1 and "not evenly spaced" in lines[0] and "--z_spacing" in lines[0], lines
    tifffile.imwrite(tmp_path / "plain.tif", np.zeros((3, 8, 8), np.uint8), photometric="minisblack")
    assert stated_z_spacing(tmp_path / "plain.tif", slices="0-2:2") == (None, "")  # the file states none
    assert stated_z_spacing(None) == (None, "") and stated_z_spacing(None, 40) == (40, "--z_spacing")


def test_prediction_at_another_scale_keeps_the_input_grid_and_the_count(tmp_path: Path) -> None:
    torch.manual_seed(0)
    network = MultiTaskUNet(width=8).eval()
    image = np.random.default_rng(0).normal(size=(96, 128)).astype(np.float32)
    inferer = SlidingWindowInferer([64, 64], 1, 0.25, mode="gaussian")
    same = VolumePredictor(network, inferer, progress=False).predict_image(image)
    up = VolumePredictor(network, inferer, progress=False, scale=(2.0, 2.0)).predict_image(image)
    assert up[0].shape == up[1].shape == up[2].shape == image.shape
    assert 0 <= up[0].min() and up[0].max() <= 1
    big = VolumePredictor(network, inferer, progress=False).predict_image(
        np.asarray(torch.nn.functional.interpolate(torch.from_numpy(image)[None, None], scale_factor=2,
                                                   mode="bilinear")[0, 0]))  # fmt: skip
    assert up[1].sum() == pytest.approx(big[1].sum(), rel=0.02)  # the density integral survives the resampling
    assert not np.allclose(up[0], same[0])


def test_metadata_states_the_models_pixel_size() -> None:
    import json

    meta = json.loads((REPO / "configs" / "metadata.json").read_text())
    assert meta["pixel_size_nm"] == [MODEL_PIXEL_SIZE, MODEL_PIXEL_SIZE]


def test_resample_volume_script_halves_a_volume_and_refuses_bad_factors(tmp_path: Path) -> None:
    import subprocess
    import sys

    tifffile.imwrite(tmp_path / "vol.tif", np.random.default_rng(0).integers(0, 255, (3, 64, 80), dtype=np.uint8),
                     photometric="minisblack")  # fmt: skip
    command = [sys.executable, "scripts/resample_volume.py", "--input", str(tmp_path / "vol.tif"), "--output"]
    done = subprocess.run([*command, str(tmp_path / "half.tif"), "--factor", "0.5", "--slices", "1-2"], cwd=REPO,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert tifffile.imread(tmp_path / "half.tif").shape == (2, 32, 40)
    bad = subprocess.run([*command, str(tmp_path / "x.tif"), "--factor", "0"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("mitoda: error: --factor") and not (tmp_path / "x.tif").exists()

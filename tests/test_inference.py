"""VolumePredictor on synthetic volumes: outputs (TIFF and OME-Zarr folders), unique ids, no partial files;
load_slices and paper recipe."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tifffile
import torch
from monai.bundle import ConfigParser
from monai.inferers import SlidingWindowInferer

from bundle.data.dataset import load_slices
from bundle.data.io import read_volume
from bundle.data.pixel_size import file_pixel_size
from bundle.inference import VolumePredictor, write_instances_3d
from bundle.inference.prediction_folder import read_prediction
from bundle.metrics.evaluate import evaluate_predictions
from bundle.networks import MultiTaskUNet, load_checkpoint
from tests.helpers import REPO, VNC, need, raises_one_line


@pytest.fixture()
def volume_path(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "vol.tif"
    tifffile.imwrite(path, rng.integers(0, 255, (3, 80, 96), dtype=np.uint8), photometric="minisblack")
    return path


def _predictor(**kwargs) -> VolumePredictor:
    torch.manual_seed(0)
    network = MultiTaskUNet(width=4)
    return VolumePredictor(network, SlidingWindowInferer(roi_size=(64, 64), overlap=0.25, mode="gaussian"), progress=False, **kwargs)


def test_predictor_writes_three_stacks_with_unique_ids(volume_path, tmp_path) -> None:
    always_two = lambda probability, density: np.pad(np.array([[1, 2]]), ((0, 79), (0, 94)))  # noqa: E731
    files = _predictor(postprocessing=always_two)(volume_path, tmp_path / "out")
    probability = read_volume(files["probability.tif"])
    assert probability.shape == (3, 80, 96) and probability.dtype == np.float32
    assert 0.0 <= probability.min() and probability.max() <= 1.0
    assert read_volume(files["density.tif"]).min() >= 0
    instances = read_volume(files["instances.tif"])
    assert instances[:, 0, :2].tolist() == [[1, 2], [3, 4], [5, 6]]  # ids continue across slices
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["density.tif", "instances.tif", "probability.tif"]


def test_ome_zarr_prediction_folder_is_linked_scored_and_rewritten(volume_path, tmp_path) -> None:
    """An --output_dir ending in .zarr: one OME-Zarr image per output (chunks of a slice, the input's pixel size),
    linked in 3D and scored there; a new prediction drops the earlier linking; a failed one leaves no image."""
    out = tmp_path / "pred.ome.zarr"
    files = _predictor(pixel_size=(8.0, 6.0))(volume_path, out)
    assert sorted(files) == ["density", "instances", "probability"]
    assert read_prediction(out, "instances").dtype == np.uint32 and file_pixel_size(files["density"]) == (8.0, 6.0)
    assert json.loads((files["probability"] / "0" / ".zarray").read_text())["chunks"] == [1, 80, 96]
    tiff = read_volume(_predictor()(volume_path, tmp_path / "tif")["probability.tif"])
    np.testing.assert_array_equal(read_prediction(out, "probability"), tiff)
    linked = write_instances_3d(out)
    assert sorted(linked) == ["instances_3d", "instances_3d.csv"]
    assert file_pixel_size(linked["instances_3d"]) == (8.0, 6.0)
    label = tmp_path / "label.tif"
    mask = (read_prediction(out, "probability") > 0.5).astype(np.uint8) * 255
    tifffile.imwrite(label, mask, photometric="minisblack")
    scores = evaluate_predictions(out, label, tmp_path / "scores", overlay_slices=[])
    assert scores["dice"] > 0.99 and "ap50" in scores  # the 3D AP from OUT.ome.zarr/instances_3d
    _predictor()(volume_path, out)
    assert sorted(p.name for p in out.iterdir()) == [".zattrs", ".zgroup", "density", "instances", "probability"]
    def broken(probability, density):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        _predictor(postprocessing=broken)(volume_path, out)
    assert sorted(p.name for p in out.iterdir()) == [".zattrs", ".zgroup", "density", "instances", "probability"]
    shutil.rmtree(out / "density")
    (out / "density").write_text("")
    raises_one_line(_predictor(), volume_path, out, name="is a file where this run writes a folder")


def test_predictor_failure_leaves_no_partial_files(volume_path, tmp_path) -> None:
    def broken(probability, density):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        _predictor(postprocessing=broken)(volume_path, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_predictor_slices_and_output_file(volume_path, tmp_path) -> None:
    files = _predictor()(volume_path, tmp_path / "out", slices="1-2")
    assert read_volume(files["probability.tif"]).shape == (2, 80, 96)
    (tmp_path / "file").write_text("")
    raises_one_line(_predictor(), volume_path, tmp_path / "file", name="file")


def test_checkpoint_for_another_network_is_refused(tmp_path) -> None:
    path = tmp_path / "w8.pt"
    torch.save({"model": MultiTaskUNet(width=8).state_dict()}, path)
    load_checkpoint(MultiTaskUNet(width=8), path)  # CheckpointSaver's {"model": ...} layout loads
    raises_one_line(load_checkpoint, MultiTaskUNet(width=4), path, name="w8.pt")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    raises_one_line(load_checkpoint, MultiTaskUNet(width=4), tmp_path / "junk.pt", name="junk.pt")


def test_load_slices_real_vnc() -> None:
    items = load_slices(need(VNC / "raw"), VNC / "mitochondria", slices="0-1", sigma=11.0, binary_label=True)
    assert len(items) == 2
    image, label, density = items[0]["image"], items[0]["label"], items[0]["density"]
    assert image.shape == label.shape == density.shape == (1, 1024, 1024)
    assert abs(float(image.mean())) < 1e-3 and abs(float(image.std()) - 1) < 1e-2  # per-slice z-score
    assert set(np.unique(label).tolist()) == {0, 1}
    instances = load_slices(VNC / "raw", VNC / "mitochondria", slices="0")[0]["label"]
    assert float(density.sum()) == pytest.approx(len(np.unique(instances)) - 1, rel=1e-4)  # one unit per instance


def test_load_slices_refuses_constant_image(tmp_path) -> None:
    tifffile.imwrite(tmp_path / "flat.tif", np.full((2, 32, 32), 7, np.uint8), photometric="minisblack")
    raises_one_line(load_slices, tmp_path / "flat.tif", name="flat.tif")


def test_paper_recipe_resolves(monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    for files in (["configs/train.yaml", "configs/recipe_paper.yaml"], ["configs/inference.yaml", "configs/recipe_paper.yaml"]):
        parser = ConfigParser()
        parser.read_config(files)
        assert parser.get_parsed_content("network_def").features[0] == 32
    assert parser.get_parsed_content("crop_size") == [512, 512]


def test_predictor_reads_every_format_slice_by_slice(volume_path, tmp_path) -> None:
    import h5py
    import imageio.v3 as iio
    import mrcfile
    import nibabel as nib
    import zarr

    from bundle.data.readers.zarr import write_ome_zarr

    data = tifffile.imread(volume_path)
    reference = read_volume(_predictor()(volume_path, tmp_path / "tif")["probability.tif"])
    with h5py.File(tmp_path / "vol.h5", "w") as handle:
        handle.create_dataset("raw", data=data, chunks=(1, 80, 96))
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data.T), np.eye(4)), tmp_path / "vol.nii.gz")
    (tmp_path / "slices").mkdir()
    for z, image in enumerate(data):
        iio.imwrite(tmp_path / "slices" / f"s{z}.png", image)
    zarr.open_group(str(tmp_path / "vol.zarr"), mode="w").create_array("raw", data=data, chunks=(1, 80, 96))
    write_ome_zarr(tmp_path / "vol.ome.zarr", data)
    with mrcfile.new(tmp_path / "vol.mrc") as mrc:
        mrc.set_data(data.astype(np.int16))
    for name in ("vol.h5", "vol.nii.gz", "slices", "vol.zarr", "vol.ome.zarr", "vol.mrc"):
        _predictor()(tmp_path / name, tmp_path / f"out_{name}")  # out_vol.zarr, out_vol.ome.zarr: OME-Zarr outputs
        probability = read_prediction(tmp_path / f"out_{name}", "probability")
        np.testing.assert_allclose(probability, reference, atol=1e-6, err_msg=name)
    tifffile.imwrite(tmp_path / "one.tif", data[1], photometric="minisblack")  # a 2D image is one slice
    one = read_volume(_predictor()(tmp_path / "one.tif", tmp_path / "out_one")["probability.tif"])
    np.testing.assert_allclose(one, reference[1:2], atol=1e-6)


def test_predictor_refuses_4d_constant_and_nan_slices(volume_path, tmp_path) -> None:
    tifffile.imwrite(tmp_path / "4d.tif", np.ones((2, 2, 32, 32), np.uint8), photometric="minisblack")
    assert "4 dimensions" in raises_one_line(_predictor(), tmp_path / "4d.tif", tmp_path / "out4", name="4d.tif")
    assert not (tmp_path / "out4").exists()
    data = tifffile.imread(volume_path)
    data[1] = 7
    tifffile.imwrite(tmp_path / "blank.tif", data, photometric="minisblack")
    msg = raises_one_line(_predictor(), tmp_path / "blank.tif", tmp_path / "out", name="blank.tif")
    assert "slice 1 is constant" in msg and "--slices" in msg
    assert list((tmp_path / "out").iterdir()) == []  # the partial files of slice 0 are gone
    floats = data.astype(np.float32)
    floats[0, 3, 4] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", floats, photometric="minisblack")
    assert "slice 0 contains NaN" in raises_one_line(_predictor(), tmp_path / "nan.tif", tmp_path / "out_nan", name="nan.tif")
    assert not (tmp_path / "out_nan").exists()  # the first slice is checked before anything is created

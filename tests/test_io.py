"""Tests for bundle.data.io: every format and error on synthetic files, plus the real VNC and EPFL data."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import imageio.v3 as iio
import nibabel as nib
import numpy as np
import pytest
import tifffile
from monai.transforms import LoadImage, LoadImaged

from bundle.data.io import (
    EMReader,
    check_same_shape,
    instances_from_mask,
    parse_slices,
    read_instances,
    read_mask,
    read_volume,
    select_slices,
    write_tiff,
)
from tests.helpers import EPFL, VNC
from tests.helpers import need as _need
from tests.helpers import raises_one_line as _raises_one_line

def _vol(shape: tuple[int, ...] = (3, 5, 7), dtype: type = np.uint8) -> np.ndarray:
    """A small volume whose every voxel is distinct (mod dtype range)."""
    return (np.arange(int(np.prod(shape))) % 251).reshape(shape).astype(dtype)


def _tif(path: Path, data: np.ndarray) -> None:
    """Write a greyscale TIFF (tifffile would store a first/last axis of 3 or 4 as RGB by default)."""
    tifffile.imwrite(path, data, photometric="minisblack")


# ------------------------------------------------------------------------------------------------ synthetic formats
def test_multipage_tiff(tmp_path: Path) -> None:
    vol = _vol((4, 6, 9), np.uint16)
    _tif(tmp_path / "v.tif", vol)
    out = read_volume(tmp_path / "v.tif")
    assert out.dtype == np.uint16 and np.array_equal(out, vol)


def test_multipage_tiff_written_page_by_page(tmp_path: Path) -> None:
    """A generic multi-page TIFF (no shape metadata, e.g. from other tools) reads all pages."""
    vol = _vol((5, 6, 9))
    with tifffile.TiffWriter(tmp_path / "v.tiff") as tif:
        for page in vol:
            tif.write(page, photometric="minisblack", metadata=None)
    assert np.array_equal(read_volume(str(tmp_path / "v.tiff")), vol)


def test_single_page_tiff_is_one_slice(tmp_path: Path) -> None:
    img = _vol((6, 9))
    _tif(tmp_path / "one.TIF", img)
    out = read_volume(tmp_path / "one.TIF")
    assert out.shape == (1, 6, 9) and np.array_equal(out[0], img)


def test_png_folder_numeric_order(tmp_path: Path) -> None:
    for number in (10, 1, 2):
        iio.imwrite(tmp_path / f"{number}.png", np.full((4, 5), number, np.uint8))
    (tmp_path / ".hidden.png").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / "sub").mkdir()
    out = read_volume(tmp_path)
    assert out.shape == (3, 4, 5) and out.dtype == np.uint8
    assert out[:, 0, 0].tolist() == [1, 2, 10]


def test_tiff_folder_zero_padded(tmp_path: Path) -> None:
    vol = _vol((12, 4, 5), np.uint16)
    for z, page in enumerate(vol):
        _tif(tmp_path / f"slice_{z:02d}.tif", page)
    assert np.array_equal(read_volume(tmp_path), vol)


def test_bilevel_png_slices_stack_with_8bit(tmp_path: Path) -> None:
    """1-bit PNGs (as in some VNC masks) are read as 0/255 so they stack with 8-bit slices."""
    from PIL import Image

    Image.fromarray(np.array([[0, 200], [255, 0]], np.uint8)).save(tmp_path / "0.png")
    Image.fromarray(np.array([[True, False], [False, True]])).convert("1").save(tmp_path / "1.png")
    out = read_volume(tmp_path)
    assert out.dtype == np.uint8 and out[1].tolist() == [[255, 0], [0, 255]]
    assert read_mask(tmp_path).tolist() == [[[0, 1], [1, 0]], [[1, 0], [0, 1]]]


def test_nifti_transposed_to_zyx(tmp_path: Path) -> None:
    vol = _vol((3, 5, 7), np.int16)  # (Z, Y, X)
    nib.save(nib.Nifti1Image(vol.transpose(2, 1, 0), np.eye(4)), tmp_path / "v.nii.gz")
    out = read_volume(tmp_path / "v.nii.gz")
    assert out.dtype == np.int16 and np.array_equal(out, vol)
    nib.save(nib.Nifti1Image(vol.transpose(2, 1, 0).astype(np.uint8), np.eye(4)), tmp_path / "v.nii")
    assert read_volume(tmp_path / "v.nii").dtype == np.uint8


def test_hdf5_only_dataset_and_key(tmp_path: Path) -> None:
    vol = _vol((3, 4, 5), np.float32)
    with h5py.File(tmp_path / "one.h5", "w") as f:
        f.create_dataset("group/raw", data=vol)
    assert np.array_equal(read_volume(tmp_path / "one.h5"), vol)
    with h5py.File(tmp_path / "two.hdf5", "w") as f:
        f["raw"] = vol
        f["label"] = vol > 3
    assert np.array_equal(read_volume(tmp_path / "two.hdf5", key="raw"), vol)
    assert read_volume(tmp_path / "two.hdf5", key="/label").dtype == np.bool_


def test_write_tiff_roundtrip_and_atomic(tmp_path: Path) -> None:
    vol = _vol((4, 6, 8), np.uint16)
    target = tmp_path / "out" / "pred.tif"
    write_tiff(target, vol)
    assert np.array_equal(read_volume(target), vol)
    write_tiff(target, vol[:1] + 1)  # overwrite in place
    assert np.array_equal(read_volume(target), vol[:1] + 1)
    assert sorted(os.listdir(target.parent)) == ["pred.tif"]  # no temporary file left behind
    write_tiff(tmp_path / "mask.tif", vol > 10)
    assert read_volume(tmp_path / "mask.tif").dtype == np.uint8


def test_write_tiff_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", broken)
    with pytest.raises(OSError):
        write_tiff(tmp_path / "pred.tif", _vol())
    assert os.listdir(tmp_path) == []


def test_read_mask_and_instances(tmp_path: Path) -> None:
    vol = np.array([[[0, 100, 128, 255]]], np.uint8)
    _tif(tmp_path / "m.tif", vol)
    mask = read_mask(tmp_path / "m.tif")
    assert mask.dtype == np.uint8 and mask.tolist() == [[[0, 0, 1, 1]]]
    _tif(tmp_path / "m01.tif", (vol > 0).astype(np.uint8))  # 0/1 masks are taken as they are
    assert read_mask(tmp_path / "m01.tif").tolist() == [[[0, 1, 1, 1]]]
    _tif(tmp_path / "ids.tif", np.array([[[0, 3, 70000]]], np.uint32))
    ids = read_instances(tmp_path / "ids.tif")
    assert ids.dtype == np.int32 and ids.tolist() == [[[0, 3, 70000]]]
    _tif(tmp_path / "fids.tif", np.array([[[0.0, 2.0]]], np.float32))
    assert read_instances(tmp_path / "fids.tif").dtype == np.int32
    _tif(tmp_path / "big.tif", np.array([[[0, 2**40]]], np.uint64))
    assert read_instances(tmp_path / "big.tif").dtype == np.int64


def test_instances_from_mask_4_connectivity_and_unique_ids() -> None:
    mask = np.zeros((2, 4, 4), np.uint8)
    mask[0, 0, 0] = mask[0, 1, 1] = 1  # diagonal neighbours: two components with 4-connectivity
    mask[1, 2:, 2:] = 1
    lab = instances_from_mask(mask)
    assert lab.dtype == np.int32
    assert sorted(np.unique(lab[0]).tolist()) == [0, 1, 2]
    assert np.unique(lab[1]).tolist() == [0, 3]


def test_parse_and_select_slices() -> None:
    vol = _vol((165, 2, 2))
    assert parse_slices(None, 4) == [0, 1, 2, 3]
    assert parse_slices("all", 3) == [0, 1, 2] == parse_slices(" ALL ", 3)  # CLI users cannot pass None
    assert parse_slices("0-119", 165) == list(range(120))
    assert parse_slices("120-164", 165) == list(range(120, 165))
    assert parse_slices("0,5,7-9", 10) == [0, 5, 7, 8, 9]
    assert parse_slices("0-119:3", 165) == list(range(0, 120, 3))  # the CPU recipe's target slices
    assert parse_slices("120\u2013164", 165)[0] == 120  # en dash, as written in the protocol
    assert parse_slices([3, 1], 4) == [3, 1]
    assert select_slices(vol, "120-164").shape == (45, 2, 2)
    assert np.array_equal(select_slices(vol, "0,5,7-9"), vol[[0, 5, 7, 8, 9]])
    assert np.shares_memory(select_slices(vol, "0-119"), vol)
    assert select_slices(vol, None) is not None and select_slices(vol, None).shape == vol.shape


@pytest.mark.parametrize("spec", ["5-200", "abc", "", "9-3", "1,1", "0-9:0", "5:2", [0, 165], [-1]])
def test_bad_slice_specs(spec) -> None:
    msg = _raises_one_line(select_slices, _vol((165, 2, 2)), spec, "/d/vol.tif", name="/d/vol.tif")
    if spec == "5-200":
        assert "165" in msg


def test_check_same_shape() -> None:
    check_same_shape(_vol(), _vol(), "a.tif", "b.tif")
    msg = _raises_one_line(check_same_shape, _vol(), _vol((3, 5, 8)), "a.tif", "b.tif", name="b.tif")
    assert "a.tif" in msg and "(3, 5, 8)" in msg


# ------------------------------------------------------------------------------------------------ synthetic errors
def test_error_missing_path(tmp_path: Path) -> None:
    _raises_one_line(read_volume, tmp_path / "nope.tif", name="nope.tif")


def test_error_unsupported_extension(tmp_path: Path) -> None:
    (tmp_path / "vol.npy").write_bytes(b"x")
    _raises_one_line(read_volume, tmp_path / "vol.npy", name="vol.npy")


def test_error_empty_folder(tmp_path: Path) -> None:
    folder = tmp_path / "empty_slices"
    folder.mkdir()
    (folder / "readme.txt").write_text("no images")
    _raises_one_line(read_volume, folder, name="empty_slices")


def test_error_rgb_tiff(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((4, 8, 8, 3), np.uint8), photometric="rgb")
    msg = _raises_one_line(read_volume, tmp_path / "rgb.tif", name="rgb.tif")
    assert "3 channels" in msg and "RGB" in msg


def test_error_planar_rgb_tiff_hints_minisblack(tmp_path: Path) -> None:
    """tifffile.imwrite stores a (3, Y, X) array as planar RGB by default; the message says how to fix it."""
    tifffile.imwrite(tmp_path / "three.tif", np.zeros((3, 8, 8), np.uint8), photometric="rgb")
    assert "minisblack" in _raises_one_line(read_volume, tmp_path / "three.tif", name="three.tif")


def test_error_rgb_png(tmp_path: Path) -> None:
    iio.imwrite(tmp_path / "0.png", np.zeros((8, 8, 3), np.uint8))
    _raises_one_line(read_volume, tmp_path, name="0.png")
    _raises_one_line(read_volume, tmp_path / "0.png", name="0.png")


def test_error_nan_float_tiff(tmp_path: Path) -> None:
    vol = np.zeros((2, 4, 4), np.float32)
    vol[1, 2, 3] = np.nan
    _tif(tmp_path / "nan.tif", vol)
    assert "NaN" in _raises_one_line(read_volume, tmp_path / "nan.tif", name="nan.tif")


def test_error_4d_array(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "4d.tif", np.zeros((2, 3, 8, 8), np.uint8), photometric="minisblack")
    _raises_one_line(read_volume, tmp_path / "4d.tif", name="4d.tif")
    with h5py.File(tmp_path / "4d.h5", "w") as f:
        f["raw"] = np.zeros((2, 3, 4, 5), np.uint8)
    assert "4 dimensions" in _raises_one_line(read_volume, tmp_path / "4d.h5", name="4d.h5")


def test_error_inconsistent_slice_shapes(tmp_path: Path) -> None:
    _tif(tmp_path / "0.tif", np.zeros((4, 4), np.uint8))
    _tif(tmp_path / "1.tif", np.zeros((4, 4), np.uint8))
    _tif(tmp_path / "2.tif", np.zeros((4, 5), np.uint8))
    _raises_one_line(read_volume, tmp_path, name="2.tif")


def test_error_inconsistent_slice_dtypes(tmp_path: Path) -> None:
    _tif(tmp_path / "0.tif", np.zeros((4, 4), np.uint8))
    _tif(tmp_path / "1.tif", np.zeros((4, 4), np.uint16))
    _raises_one_line(read_volume, tmp_path, name="1.tif")


def test_error_hdf5_two_datasets_no_key(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["raw"] = np.zeros((2, 3, 4), np.uint8)
        f["label"] = np.zeros((2, 3, 4), np.uint8)
    msg = _raises_one_line(read_volume, tmp_path / "two.h5", name="two.h5")
    assert "raw" in msg and "label" in msg
    assert "raw" in _raises_one_line(read_volume, tmp_path / "two.h5", key="image", name="two.h5")


def test_error_empty_volume_and_corrupt_file(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f["raw"] = np.zeros((0, 3, 4), np.uint8)
    _raises_one_line(read_volume, tmp_path / "empty.h5", name="empty.h5")
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    _raises_one_line(read_volume, tmp_path / "broken.tif", name="broken.tif")


def test_error_mask_and_instance_values(tmp_path: Path) -> None:
    _tif(tmp_path / "prob.tif", np.full((1, 2, 2), 0.7, np.float32))
    _raises_one_line(read_mask, tmp_path / "prob.tif", name="prob.tif")
    _tif(tmp_path / "fids.tif", np.array([[[0.0, 1.5]]], np.float32))
    _raises_one_line(read_instances, tmp_path / "fids.tif", name="fids.tif")


def test_error_duplicate_slice_numbers(tmp_path: Path) -> None:
    iio.imwrite(tmp_path / "1.png", np.zeros((2, 2), np.uint8))
    iio.imwrite(tmp_path / "01.png", np.zeros((2, 2), np.uint8))
    _raises_one_line(read_volume, tmp_path, name="1.png")


# ------------------------------------------------------------------------------------------------ MONAI reader
def test_emreader_loadimage_synthetic(tmp_path: Path) -> None:
    vol = _vol((4, 6, 9), np.uint16)
    _tif(tmp_path / "v.tif", vol)
    reader = EMReader()
    assert reader.verify_suffix(str(tmp_path / "v.tif")) and reader.verify_suffix(tmp_path)
    assert reader.verify_suffix("a.nii.gz") and reader.verify_suffix("a.H5") and not reader.verify_suffix("a.npy")
    img = LoadImage(reader=EMReader(), image_only=True, dtype=None)(tmp_path / "v.tif")
    assert tuple(img.shape) == vol.shape and np.array_equal(img.numpy(), vol)
    assert np.array_equal(img.affine.numpy(), np.eye(4))
    assert np.isnan(img.meta["original_channel_dim"])
    chan = LoadImage(reader=EMReader(), image_only=True, ensure_channel_first=True)(tmp_path / "v.tif")
    assert tuple(chan.shape) == (1, *vol.shape)
    data = LoadImaged(["image", "label"], reader=EMReader())({"image": tmp_path / "v.tif", "label": tmp_path / "v.tif"})
    assert tuple(data["image"].shape) == vol.shape and np.array_equal(data["label"].numpy(), vol.astype(np.float32))


def test_emreader_hdf5_key(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["raw"] = _vol()
        f["label"] = _vol() > 5
    img = LoadImage(reader=EMReader(key="raw"), image_only=True, dtype=None)(tmp_path / "two.h5")
    assert np.array_equal(img.numpy(), _vol())


def test_emreader_errors_reach_user_as_inputerror(tmp_path: Path) -> None:
    """LoadImage must not swallow the InputError nor fall back to PILReader (which reads RGB TIFFs silently)."""
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((4, 8, 8, 3), np.uint8), photometric="rgb")
    _raises_one_line(LoadImage(reader=EMReader(), image_only=True), tmp_path / "rgb.tif", name="rgb.tif")
    _raises_one_line(LoadImage(reader=EMReader(), image_only=True), tmp_path / "missing.tif", name="missing.tif")


# ------------------------------------------------------------------------------------------------ real data
@pytest.fixture(scope="module")
def epfl_image() -> np.ndarray:
    return read_volume(_need(EPFL / "training.tif"))


@pytest.fixture(scope="module")
def epfl_instances() -> np.ndarray:
    return read_instances(_need(EPFL / "training_instances.tif"))


def test_vnc_raw_folder() -> None:
    vol = read_volume(_need(VNC / "raw"))
    assert vol.shape == (20, 1024, 1024) and vol.dtype == np.uint8
    assert np.array_equal(vol[10], tifffile.imread(VNC / "raw" / "10.tif"))
    assert not np.array_equal(vol[1], vol[10])


def test_vnc_masks_binarise() -> None:
    mask = read_mask(_need(VNC / "mitochondria"))
    assert mask.shape == (20, 1024, 1024) and mask.dtype == np.uint8
    assert set(np.unique(mask).tolist()) == {0, 1}
    assert 0.01 < mask.mean() < 0.40
    assert all(0.01 < f < 0.40 for f in mask.mean(axis=(1, 2)))  # every slice, 1-bit PNGs included


def test_epfl_volume_all_pages(epfl_image: np.ndarray) -> None:
    assert epfl_image.shape == (165, 768, 1024) and epfl_image.dtype == np.uint8
    assert not np.array_equal(epfl_image[0], epfl_image[164])


def test_epfl_instances_and_mask(epfl_instances: np.ndarray) -> None:
    assert epfl_instances.shape == (165, 768, 1024) and epfl_instances.dtype == np.int32
    mask = read_mask(_need(EPFL / "training_groundtruth.tif"))
    assert np.array_equal(mask.astype(bool), epfl_instances > 0)
    for z in (0, 120):
        count = int(instances_from_mask(mask[z]).max())
        ids = len(np.unique(epfl_instances[z])) - 1
        assert abs(count - ids) <= 0.3 * ids, (z, count, ids)


def test_loadimage_equals_read_volume_real(epfl_image: np.ndarray) -> None:
    loader = LoadImage(reader=EMReader(), image_only=True, dtype=None)
    img = loader(_need(EPFL / "training.tif"))
    assert tuple(img.shape) == (165, 768, 1024) and np.array_equal(img.numpy(), epfl_image)
    vnc = loader(_need(VNC / "raw"))
    assert tuple(vnc.shape) == (20, 1024, 1024) and np.array_equal(vnc.numpy(), read_volume(VNC / "raw"))


def test_epfl_protocol_split(epfl_image: np.ndarray) -> None:
    adapt = select_slices(epfl_image, "0-119", str(EPFL / "training.tif"))
    val = select_slices(epfl_image, "120-164", str(EPFL / "training.tif"))
    assert adapt.shape[0] == 120 and val.shape[0] == 45
    _raises_one_line(select_slices, epfl_image, "5-200", str(EPFL / "training.tif"), name="training.tif")


def test_read_label_instances_masks_and_ids(tmp_path: Path) -> None:
    from bundle.data.io import read_label_instances

    two_blobs = np.zeros((1, 8, 8), np.uint16)
    two_blobs[0, 1:3, 1:3] = 1
    two_blobs[0, 5:7, 5:7] = 1
    _tif(tmp_path / "binary16.tif", two_blobs)  # a 0/1 mask stored in 16 bits: two components, not one id
    assert sorted(np.unique(read_label_instances(tmp_path / "binary16.tif")).tolist()) == [0, 1, 2]
    _tif(tmp_path / "antialiased.tif", (two_blobs * 200 + 60 * (two_blobs == 0)).astype(np.uint8))  # 60 is background
    assert sorted(np.unique(read_label_instances(tmp_path / "antialiased.tif")).tolist()) == [0, 1, 2]
    ids = two_blobs * 7
    ids[0, 5:7, 5:7] = 300
    _tif(tmp_path / "ids.tif", ids)  # 16-bit ids are kept as they are
    assert sorted(np.unique(read_label_instances(tmp_path / "ids.tif")).tolist()) == [0, 7, 300]

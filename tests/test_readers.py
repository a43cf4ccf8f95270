"""The format readers (bundle.data.readers): zarr v2/v3, OME-Zarr, MRC on small files made here, their one-line
errors, the OME-Zarr writer, the z spacing each format states, and `read_volume` and `SliceVolume` agreeing on every
format."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import h5py
import imageio.v3 as iio
import mrcfile
import nibabel as nib
import numpy as np
import pytest
import tifffile
import zarr

from bundle.data.io import SliceVolume, read_volume, write_volume
from bundle.data.pixel_size import file_pixel_size, file_z_spacing
from bundle.data.readers import reader_for
from bundle.data.readers.zarr import write_ome_zarr
from tests.helpers import raises_one_line

VOLUME = (np.arange(4 * 6 * 10) % 251).reshape(4, 6, 10).astype(np.uint16)  # every voxel distinct


def _zarr_array(path: Path, data: np.ndarray, zarr_format: int) -> None:
    """A bare zarr array of one chunk per slice."""
    array = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype, chunks=(1, *data.shape[1:]),
                              zarr_format=zarr_format)  # fmt: skip
    array[...] = data


def _ome_image(path: Path, levels: dict[str, np.ndarray], axes: list[dict], scales: list[list[float]],
               version: str = "0.4") -> None:  # fmt: skip
    """An OME-Zarr image group by hand: v0.4 on zarr v2 (`.zattrs`), v0.5 on zarr v3 (attributes["ome"])."""
    datasets = [{"path": name, "coordinateTransformations": [{"type": "scale", "scale": scale}]}
                for name, scale in zip(levels, scales)]  # fmt: skip
    image = {"axes": axes, "datasets": datasets}
    if version == "0.4":
        attributes = {"multiscales": [{"version": "0.4", **image}]}
        group = zarr.open_group(str(path), mode="w", zarr_format=2, attributes=attributes)
    else:
        group = zarr.open_group(str(path), mode="w", zarr_format=3,
                                attributes={"ome": {"version": version, "multiscales": [image]}})  # fmt: skip
    for name, data in levels.items():
        group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=data.shape)[...] = data


def _space(*names: str, unit: str | None = "micrometer") -> list[dict]:
    """OME-Zarr axes: c is a channel axis, the others space axes in `unit`."""
    units = {"unit": unit} if unit else {}
    return [{"name": n, "type": "channel"} if n == "c" else {"name": n, "type": "space", **units} for n in names]


def _mrc(path: Path, data: np.ndarray, voxel_size: tuple[float, float, float] | None = None) -> None:
    """An MRC file; `voxel_size` is (x, y, z) in Å."""
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        if voxel_size is not None:
            mrc.voxel_size = voxel_size


# ------------------------------------------------------------------------------------------------ zarr, OME-Zarr
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_zarr_array_reads_whole_and_by_slice(tmp_path: Path, zarr_format: int) -> None:
    _zarr_array(tmp_path / "vol.zarr", VOLUME, zarr_format)
    out = read_volume(tmp_path / "vol.zarr")
    assert out.dtype == np.uint16 and np.array_equal(out, VOLUME)
    with SliceVolume(tmp_path / "vol.zarr") as volume:
        assert volume.shape == VOLUME.shape and np.array_equal(volume[2], VOLUME[2])
        assert np.array_equal(volume.read(slice(1, 3), slice(2, 5), slice(0, 10, 3)), VOLUME[1:3, 2:5, 0:10:3])
    assert file_pixel_size(tmp_path / "vol.zarr") is None  # a bare array states none


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_zarr_group_reads_its_one_array_or_the_one_key_names(tmp_path: Path, zarr_format: int) -> None:
    group = zarr.open_group(str(tmp_path / "one.zarr"), mode="w", zarr_format=zarr_format)
    group.create_group("volumes").create_array("raw", shape=VOLUME.shape, dtype=VOLUME.dtype)[...] = VOLUME
    assert np.array_equal(read_volume(tmp_path / "one.zarr"), VOLUME)  # nested, the only one
    two = zarr.open_group(str(tmp_path / "two.zarr"), mode="w", zarr_format=zarr_format)
    two.create_array("raw", shape=VOLUME.shape, dtype=VOLUME.dtype)[...] = VOLUME
    two.create_array("labels", shape=VOLUME.shape, dtype=np.uint8)[...] = 3
    assert np.array_equal(read_volume(tmp_path / "two.zarr", key="raw"), VOLUME)
    assert np.array_equal(read_volume(tmp_path / "two.zarr", key="/labels"), np.full(VOLUME.shape, 3, np.uint8))
    assert np.array_equal(read_volume(tmp_path / "two.zarr" / "raw"), VOLUME)  # the array's own folder
    assert reader_for(tmp_path / "two.zarr" / "raw").kind == "zarr"  # a zarr folder without the .zarr name


def test_ome_zarr_v04_reads_level_0_with_its_pixel_size(tmp_path: Path) -> None:
    levels = {"s0": VOLUME[np.newaxis], "s1": VOLUME[np.newaxis, :, ::2, ::2]}  # (c=1, z, y, x)
    _ome_image(tmp_path / "img.ome.zarr", levels, _space("c", "z", "y", "x"),
               [[1, 0.04, 0.006, 0.008], [1, 0.04, 0.012, 0.016]])  # fmt: skip
    out = read_volume(tmp_path / "img.ome.zarr")
    assert out.shape == VOLUME.shape and np.array_equal(out, VOLUME)  # level 0, the channel axis dropped
    assert file_pixel_size(tmp_path / "img.ome.zarr") == pytest.approx((6, 8))
    assert np.array_equal(read_volume(tmp_path / "img.ome.zarr", key="s1"), VOLUME[:, ::2, ::2])
    with SliceVolume(tmp_path / "img.ome.zarr") as volume:
        assert volume.shape == VOLUME.shape and np.array_equal(volume[3], VOLUME[3])


def test_ome_zarr_v05_and_2d_images_and_units(tmp_path: Path) -> None:
    _ome_image(tmp_path / "v05.zarr", {"0": VOLUME}, _space("z", "y", "x", unit="nanometer"), [[30, 5, 7]], "0.5")
    assert np.array_equal(read_volume(tmp_path / "v05.zarr"), VOLUME)
    assert file_pixel_size(tmp_path / "v05.zarr") == pytest.approx((5, 7))
    _ome_image(tmp_path / "yx.zarr", {"0": VOLUME[0]}, _space("y", "x", unit="angstrom"), [[46, 46]])
    assert np.array_equal(read_volume(tmp_path / "yx.zarr"), VOLUME[:1])  # a 2D image is one slice
    assert file_pixel_size(tmp_path / "yx.zarr") == pytest.approx((4.6, 4.6))
    _ome_image(tmp_path / "nounit.zarr", {"0": VOLUME}, _space("z", "y", "x", unit=None), [[1, 5, 5]])
    assert file_pixel_size(tmp_path / "nounit.zarr") is None  # a scale without a unit states no size
    _ome_image(tmp_path / "odd.zarr", {"0": VOLUME}, _space("z", "y", "x"), [[1, "fine", 5]])
    assert np.array_equal(read_volume(tmp_path / "odd.zarr"), VOLUME)  # a broken scale is no pixel size, no error
    assert file_pixel_size(tmp_path / "odd.zarr") is None
    group = zarr.open_group(str(tmp_path / "v05.zarr"), mode="a")
    group.attrs["ome"] = {**group.attrs["ome"], "multiscales": [{**group.attrs["ome"]["multiscales"][0],
                          "coordinateTransformations": [{"type": "scale", "scale": [1, 2, 3]}]}]}  # fmt: skip
    assert file_pixel_size(tmp_path / "v05.zarr") == pytest.approx((10, 21))  # times the image-wide scale


def test_a_group_of_ome_images_lists_them_and_key_picks_one(tmp_path: Path) -> None:
    for name in ("raw", "mito"):
        _ome_image(tmp_path / "plate.zarr" / name, {"0": VOLUME}, _space("z", "y", "x"), [[1, 0.01, 0.01]])
    zarr.open_group(str(tmp_path / "plate.zarr"), mode="a", zarr_format=2)
    msg = raises_one_line(read_volume, tmp_path / "plate.zarr", name="plate.zarr")
    assert "2 arrays (mito, raw)" in msg and "key=<name>" in msg  # the images, not their levels
    assert np.array_equal(read_volume(tmp_path / "plate.zarr", key="mito"), VOLUME)


def test_the_ome_zarr_writer_round_trips_data_and_pixel_size(tmp_path: Path) -> None:
    probability = np.linspace(0, 1, VOLUME.size, dtype=np.float32).reshape(VOLUME.shape)
    write_volume(tmp_path / "out.ome.zarr" / "probability", probability, pixel_size=(6.0, 8.0))
    write_volume(tmp_path / "out.ome.zarr" / "instances", VOLUME)
    assert np.array_equal(read_volume(tmp_path / "out.ome.zarr" / "probability"), probability)
    assert file_pixel_size(tmp_path / "out.ome.zarr" / "probability") == pytest.approx((6, 8))
    assert file_pixel_size(tmp_path / "out.ome.zarr" / "instances") is None  # unknown: no unit written
    assert np.array_equal(read_volume(tmp_path / "out.ome.zarr", key="instances"), VOLUME)  # the container is a group
    level = zarr.open_array(str(tmp_path / "out.ome.zarr" / "probability" / "0"), mode="r")
    assert level.chunks == (1, *VOLUME.shape[1:])  # one chunk per slice
    attrs = json.loads((tmp_path / "out.ome.zarr" / "probability" / ".zattrs").read_text())
    assert attrs["multiscales"][0]["version"] == "0.4"
    write_volume(tmp_path / "out.ome.zarr" / "instances", VOLUME[:2])  # an image already there is replaced
    assert read_volume(tmp_path / "out.ome.zarr", key="instances").shape == (2, *VOLUME.shape[1:])
    assert [p.name for p in (tmp_path / "out.ome.zarr").iterdir() if p.name.endswith(".tmp")] == []
    write_ome_zarr(tmp_path / "one.zarr", VOLUME[0].astype(bool))  # 2D, bool stored as uint8
    assert np.array_equal(read_volume(tmp_path / "one.zarr"), VOLUME[:1].astype(bool).astype(np.uint8))
    write_volume(tmp_path / "out.tif", VOLUME)
    assert np.array_equal(tifffile.imread(tmp_path / "out.tif"), VOLUME)
    raises_one_line(write_volume, tmp_path / "out.npy", VOLUME, name="cannot write file type '.npy'")


# ------------------------------------------------------------------------------------------------ MRC
def test_mrc_reads_data_and_voxel_size(tmp_path: Path) -> None:
    _mrc(tmp_path / "tomo.mrc", VOLUME.astype(np.int16), voxel_size=(80.0, 60.0, 100.0))
    out = read_volume(tmp_path / "tomo.mrc")
    assert out.dtype == np.int16 and np.array_equal(out, VOLUME)
    assert file_pixel_size(tmp_path / "tomo.mrc") == pytest.approx((6, 8))  # (y, x) in nm from x, y, z Å
    with SliceVolume(tmp_path / "tomo.mrc") as volume:
        first = volume[1]
    assert np.array_equal(first, VOLUME[1])  # copied out: still valid after the file is closed
    _mrc(tmp_path / "image.mrc", VOLUME[0].astype(np.float32))
    assert np.array_equal(read_volume(tmp_path / "image.mrc"), VOLUME[:1])  # a 2D MRC is one slice
    assert file_pixel_size(tmp_path / "image.mrc") is None  # voxel size 0: unset
    _mrc(tmp_path / "imod.rec", VOLUME.astype(np.int16), voxel_size=(1.0, 1.0, 1.0))
    assert file_pixel_size(tmp_path / "imod.rec") is None  # IMOD's default of 1 Å is no measurement


# ------------------------------------------------------------------------------------------------ z spacing
def test_every_format_that_states_a_z_spacing_gives_it_in_nm(tmp_path: Path) -> None:
    _ome_image(tmp_path / "v04.zarr", {"0": VOLUME[np.newaxis]}, _space("c", "z", "y", "x"), [[1, 0.03, 0.006, 0.008]])
    assert file_z_spacing(tmp_path / "v04.zarr") == pytest.approx(30)  # micrometer, the same path as y and x
    assert file_pixel_size(tmp_path / "v04.zarr") == pytest.approx((6, 8))
    _ome_image(tmp_path / "v05.zarr", {"0": VOLUME, "s1": VOLUME[:, ::2, ::2]}, _space("z", "y", "x", unit="nanometer"),
               [[40, 5, 5], [80, 10, 10]], "0.5")  # fmt: skip
    assert file_z_spacing(tmp_path / "v05.zarr") == pytest.approx(40)  # level 0's
    assert reader_for(tmp_path / "v05.zarr").z_spacing(tmp_path / "v05.zarr", "s1") == pytest.approx(80)
    axes = [{"name": "z", "type": "space"}, *_space("y", "x")]
    _ome_image(tmp_path / "z_unitless.zarr", {"0": VOLUME}, axes, [[3, 0.005, 0.005]])
    assert file_z_spacing(tmp_path / "z_unitless.zarr") is None and file_pixel_size(tmp_path / "z_unitless.zarr")
    _ome_image(tmp_path / "yx.zarr", {"0": VOLUME[0]}, _space("y", "x"), [[0.005, 0.005]])
    assert file_z_spacing(tmp_path / "yx.zarr") is None  # a 2D image has no z axis
    _mrc(tmp_path / "tomo.mrc", VOLUME.astype(np.int16), voxel_size=(80.0, 60.0, 100.0))  # x, y, z in Å
    assert file_z_spacing(tmp_path / "tomo.mrc") == pytest.approx(10)
    image = nib.Nifti1Image(VOLUME.T.astype(np.float32), np.diag([0.007, 0.006, 0.05, 1]))  # nibabel's (x, y, z)
    image.header.set_xyzt_units("micron")
    nib.save(image, tmp_path / "vol.nii.gz")
    assert file_z_spacing(tmp_path / "vol.nii.gz") == pytest.approx(50)  # the third pixdim
    with h5py.File(tmp_path / "vol.h5", "w") as handle:
        handle.create_dataset("raw", data=VOLUME).attrs["element_size_um"] = (0.045, 0.01, 0.01)
        handle.create_dataset("yx", data=VOLUME).attrs["element_size_um"] = (0.01, 0.01)
    assert reader_for(tmp_path / "vol.h5").z_spacing(tmp_path / "vol.h5", "raw") == pytest.approx(45)
    assert reader_for(tmp_path / "vol.h5").z_spacing(tmp_path / "vol.h5", "yx") is None  # (y, x) only
    tifffile.imwrite(tmp_path / "ij.tif", VOLUME, imagej=True, resolution=(1 / 0.008, 1 / 0.008),
                     metadata={"spacing": 0.05, "unit": "um"})  # fmt: skip
    assert file_z_spacing(tmp_path / "ij.tif") == pytest.approx(50)
    tifffile.imwrite(tmp_path / "ome.tif", VOLUME, ome=True, metadata={"axes": "ZYX", "PhysicalSizeZ": 40,
                     "PhysicalSizeZUnit": "nm", "PhysicalSizeY": 6, "PhysicalSizeYUnit": "nm"})  # fmt: skip
    assert file_z_spacing(tmp_path / "ome.tif") == pytest.approx(40)
    tifffile.imwrite(tmp_path / "ome_um.tif", VOLUME, ome=True, metadata={"axes": "ZYX", "PhysicalSizeZ": 0.03})
    assert file_z_spacing(tmp_path / "ome_um.tif") == pytest.approx(30)  # OME's default unit: µm
    for name, (write, _) in FORMATS.items():  # the plain files of every format
        folder = tmp_path / "plain" / name.replace(" ", "_")
        folder.mkdir(parents=True)
        assert file_z_spacing(write(folder)) == (1000 if name == "ome-zarr" else None), name  # its z scale: 1 µm


def test_a_placeholder_or_broken_z_spacing_is_none(tmp_path: Path) -> None:
    _mrc(tmp_path / "imod.rec", VOLUME.astype(np.int16), voxel_size=(1.0, 1.0, 1.0))  # IMOD's default
    _mrc(tmp_path / "unset.mrc", VOLUME.astype(np.int16), voxel_size=(50.0, 50.0, 0.0))
    tifffile.imwrite(tmp_path / "cm.tif", VOLUME, imagej=True, metadata={"spacing": 1.0, "unit": "cm"})  # 1 px/cm
    tifffile.imwrite(tmp_path / "pixel.tif", VOLUME, imagej=True, metadata={"spacing": 1.0, "unit": "pixel"})
    tifffile.imwrite(tmp_path / "nounit.tif", VOLUME, imagej=True, metadata={"spacing": 0.05})
    for name, z in (("negative.h5", -0.04), ("inf.h5", np.inf)):
        with h5py.File(tmp_path / name, "w") as handle:
            handle.create_dataset("raw", data=VOLUME).attrs["element_size_um"] = (z, 0.01, 0.01)
    _ome_image(tmp_path / "zero.zarr", {"0": VOLUME}, _space("z", "y", "x"), [[0, 0.005, 0.005]])
    _ome_image(tmp_path / "odd.zarr", {"0": VOLUME}, _space("z", "y", "x", unit="parsec"), [[1, 1, 1]])
    image = nib.Nifti1Image(VOLUME.T.astype(np.float32), np.diag([0.007, 0.006, 0.05, 1]))  # no spatial unit
    nib.save(image, tmp_path / "nounit.nii.gz")
    assert reader_for(tmp_path / "negative.h5").z_spacing(tmp_path / "negative.h5") < 0  # stated, but no distance
    names = ("imod.rec", "unset.mrc", "cm.tif", "pixel.tif", "nounit.tif", "negative.h5", "inf.h5", "zero.zarr",
             "odd.zarr", "nounit.nii.gz", "missing.mrc")  # fmt: skip
    for name in names:
        assert file_z_spacing(tmp_path / name) is None, name


def test_the_ome_zarr_writer_states_the_z_spacing(tmp_path: Path) -> None:
    write_ome_zarr(tmp_path / "out.ome.zarr" / "probability", VOLUME, pixel_size=(6.0, 8.0), z_spacing=40.0)
    assert file_z_spacing(tmp_path / "out.ome.zarr" / "probability") == pytest.approx(40)
    assert file_pixel_size(tmp_path / "out.ome.zarr" / "probability") == pytest.approx((6, 8))
    write_ome_zarr(tmp_path / "z.ome.zarr", VOLUME, z_spacing=30.0)  # z known, y and x not
    attrs = json.loads((tmp_path / "z.ome.zarr" / ".zattrs").read_text())["multiscales"][0]
    assert [axis.get("unit") for axis in attrs["axes"]] == ["nanometer", None, None]
    assert attrs["datasets"][0]["coordinateTransformations"][0]["scale"] == [30.0, 1.0, 1.0]
    assert file_z_spacing(tmp_path / "z.ome.zarr") == pytest.approx(30)
    assert file_pixel_size(tmp_path / "z.ome.zarr") is None
    write_ome_zarr(tmp_path / "yx.ome.zarr", VOLUME[0], pixel_size=(6.0, 8.0), z_spacing=30.0)  # 2D: no z axis
    assert file_z_spacing(tmp_path / "yx.ome.zarr") is None


# ------------------------------------------------------------------------------------------------ bad input
def test_zarr_bad_input_is_one_line_each(tmp_path: Path) -> None:
    two = zarr.open_group(str(tmp_path / "two.zarr"), mode="w", zarr_format=3)
    for name in ("raw", "labels"):
        two.create_array(name, shape=VOLUME.shape, dtype=VOLUME.dtype)
    msg = raises_one_line(read_volume, tmp_path / "two.zarr", name="2 arrays (labels, raw)")
    assert "key=<name>" in msg and str(tmp_path / "two.zarr" / "labels") in msg
    msg = raises_one_line(read_volume, tmp_path / "two.zarr", key="image", name="has no array 'image'")
    assert "use one of: labels, raw" in msg
    zarr.open_group(str(tmp_path / "empty_group.zarr"), mode="w", zarr_format=2).create_group("nothing")
    raises_one_line(read_volume, tmp_path / "empty_group.zarr", name="holds no array")
    _zarr_array(tmp_path / "vol.zarr", VOLUME, 2)
    raises_one_line(read_volume, tmp_path / "vol.zarr", key="raw", name="leave out key")
    (tmp_path / "bare.zarr").mkdir()
    raises_one_line(read_volume, tmp_path / "bare.zarr", name="no zarr metadata")
    (tmp_path / "broken.zarr").mkdir()
    (tmp_path / "broken.zarr" / "zarr.json").write_text("{not json")
    raises_one_line(read_volume, tmp_path / "broken.zarr", name="cannot be read as zarr")
    (tmp_path / "vol.n5").mkdir()
    raises_one_line(read_volume, tmp_path / "vol.n5", name="N5 containers are not read")
    _zarr_array(tmp_path / "4d.zarr", np.zeros((2, 3, 4, 5), np.uint8), 3)
    raises_one_line(SliceVolume, tmp_path / "4d.zarr", name="4 dimensions")


@pytest.mark.parametrize(
    ("names", "shape", "problem"),
    [
        (("c", "z", "y", "x"), (3, 4, 6, 10), "(c=3, z=4, y=6, x=10)"),  # a colour channel
        (("t", "z", "y", "x"), (2, 4, 6, 10), "(t=2, z=4, y=6, x=10)"),  # a time series
        (("z", "x", "y"), (4, 10, 6), "(z=4, x=10, y=6)"),  # in-plane axes swapped
        (("y", "z", "x"), (6, 4, 10), "(y=6, z=4, x=10)"),
    ],
)
def test_ome_zarr_with_other_axes_is_one_line(tmp_path: Path, names: tuple[str, ...], shape: tuple[int, ...],
                                               problem: str) -> None:  # fmt: skip
    _ome_image(tmp_path / "img.zarr", {"0": np.zeros(shape, np.uint8)}, _space(*names), [[1.0] * len(names)])
    msg = raises_one_line(read_volume, tmp_path / "img.zarr", name=problem)
    assert "not (z, y, x) or (y, x)" in msg and "one channel of one time point" in msg


def test_ome_zarr_without_level_0_is_one_line(tmp_path: Path) -> None:
    _ome_image(tmp_path / "nolevels.zarr", {}, _space("z", "y", "x"), [])
    raises_one_line(read_volume, tmp_path / "nolevels.zarr", name="lists no datasets (no level 0)")
    _ome_image(tmp_path / "lost.zarr", {"0": VOLUME}, _space("z", "y", "x"), [[1, 1, 1]])
    for item in (tmp_path / "lost.zarr" / "0").iterdir():
        item.unlink()
    (tmp_path / "lost.zarr" / "0").rmdir()
    raises_one_line(SliceVolume, tmp_path / "lost.zarr", name="level '0' is listed in multiscales but its array is")
    raises_one_line(read_volume, tmp_path / "lost.zarr", key="1", name="has no level '1'; use one of: 0")
    _ome_image(tmp_path / "axes.zarr", {"0": VOLUME}, _space("y", "x"), [[1, 1]])
    raises_one_line(read_volume, tmp_path / "axes.zarr", name="names 2 axes (y, x) but level 0 has 3")


def test_a_corrupt_or_truncated_mrc_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "noise.mrc").write_bytes(bytes(range(256)) * 8)
    raises_one_line(read_volume, tmp_path / "noise.mrc", name="cannot be read as MRC")
    _mrc(tmp_path / "whole.mrc", VOLUME.astype(np.int16))
    (tmp_path / "cut.mrc").write_bytes((tmp_path / "whole.mrc").read_bytes()[:1100])
    raises_one_line(SliceVolume, tmp_path / "cut.mrc", name="cannot be read as MRC")
    assert file_pixel_size(tmp_path / "noise.mrc") is None  # the metadata of a bad file is no pixel size


def test_unsupported_types_name_the_formats(tmp_path: Path) -> None:
    (tmp_path / "vol.npy").write_bytes(b"x")
    msg = raises_one_line(read_volume, tmp_path / "vol.npy", name="unsupported file type '.npy'")
    assert ".mrc" in msg and ".zarr" in msg


# ------------------------------------------------------------------------------------------------ every format
def _write_tiff(path: Path) -> Path:
    tifffile.imwrite(path / "v.tif", VOLUME, photometric="minisblack")
    return path / "v.tif"


def _write_tiff_folder(path: Path) -> Path:
    for z, page in enumerate(VOLUME):
        tifffile.imwrite(path / f"s{z}.tif", page, photometric="minisblack")
    return path


def _write_png_folder(path: Path) -> Path:
    for z, page in enumerate(VOLUME):
        iio.imwrite(path / f"{z}.png", page)
    return path


def _write_png(path: Path) -> Path:
    iio.imwrite(path / "one.png", VOLUME[0])
    return path / "one.png"


def _write_nifti(path: Path) -> Path:
    nib.save(nib.Nifti1Image(VOLUME.T, np.eye(4)), path / "v.nii.gz")  # nibabel's (x, y, z)
    return path / "v.nii.gz"


def _write_hdf5(path: Path) -> Path:
    with h5py.File(path / "v.h5", "w") as handle:
        handle.create_dataset("raw", data=VOLUME, chunks=(1, *VOLUME.shape[1:]))
    return path / "v.h5"


def _write_zarr2(path: Path) -> Path:
    _zarr_array(path / "v.zarr", VOLUME, 2)
    return path / "v.zarr"


def _write_zarr3(path: Path) -> Path:
    _zarr_array(path / "v.zarr", VOLUME, 3)
    return path / "v.zarr"


def _write_ome_zarr(path: Path) -> Path:
    _ome_image(path / "v.ome.zarr", {"0": VOLUME[np.newaxis]}, _space("c", "z", "y", "x"), [[1, 1, 0.005, 0.005]])
    return path / "v.ome.zarr"


def _write_mrc(path: Path) -> Path:
    _mrc(path / "v.mrc", VOLUME)
    return path / "v.mrc"


FORMATS: dict[str, tuple[Callable[[Path], Path], np.ndarray]] = {  # name: (writer, what read_volume gives)
    "tiff": (_write_tiff, VOLUME),
    "tiff folder": (_write_tiff_folder, VOLUME),
    "png folder": (_write_png_folder, VOLUME),
    "png": (_write_png, VOLUME[:1]),
    "nifti": (_write_nifti, VOLUME),
    "hdf5": (_write_hdf5, VOLUME),
    "zarr v2": (_write_zarr2, VOLUME),
    "zarr v3": (_write_zarr3, VOLUME),
    "ome-zarr": (_write_ome_zarr, VOLUME),
    "mrc": (_write_mrc, VOLUME),
}


@pytest.mark.parametrize("name", FORMATS)
def test_read_volume_and_slice_volume_agree_on_every_format(tmp_path: Path, name: str) -> None:
    write, expected = FORMATS[name]
    path = write(tmp_path)
    whole = read_volume(path)
    assert whole.shape == expected.shape and np.array_equal(whole, expected), name
    with SliceVolume(path) as volume:
        assert volume.shape == expected.shape and volume.dtype == whole.dtype
        assert np.array_equal(np.stack([volume[z] for z in range(len(volume))]), whole)
        assert np.array_equal(volume.read(), whole)
        block = (slice(len(volume) // 2, len(volume)), slice(1, 5), slice(2, 9, 2))
        assert np.array_equal(volume.read(*block), whole[block])


"""A folder of 2D slices (PNG or TIFF files, in numeric file-name order), read one file per slice."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from bundle.data.readers.base import OpenArray, VolumeReader, error
from bundle.data.readers.png import PngReader, bilevel_to_grey
from bundle.data.readers.tiff import TIFF_SUFFIXES, TiffReader

SLICE_SUFFIXES = (".png", *TIFF_SUFFIXES)


def natural_key(name: str) -> tuple:
    """Sort key that compares digit runs as numbers: '2.png' < '10.png'; text compares case-insensitively."""
    parts = re.split(r"(\d+)", name)
    return tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts))


def slice_files(folder: Path) -> list[Path]:
    """List the PNG/TIFF slices of a folder in numeric order, ignoring hidden files and other types."""
    files = [
        p for p in folder.iterdir() if not p.name.startswith(".") and p.suffix.lower() in SLICE_SUFFIXES and p.is_file()
    ]
    if not files:
        raise error(folder, "folder contains no .png/.tif/.tiff slices", "point to the folder that holds the slices")
    kinds = {"png" if p.suffix.lower() == ".png" else "tiff" for p in files}
    if len(kinds) > 1:
        raise error(folder, "folder mixes .png and .tif slices", "keep one volume of one file type per folder")
    files.sort(key=lambda p: (natural_key(p.stem), p.name))
    for prev, cur in zip(files, files[1:]):
        if natural_key(prev.stem) == natural_key(cur.stem):
            raise error(
                cur, f"has the same slice number as {prev.name}", "rename the slices so each number occurs once"
            )
    return files


def read_slice(path: Path) -> np.ndarray:
    """Read one 2D slice file as (Y, X); 1-bit slices become uint8 0/255."""
    data = (PngReader() if path.suffix.lower() == ".png" else TiffReader()).read(path)
    if data.ndim == 3 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 2:
        raise error(
            path, f"slice file holds shape {data.shape}, not one 2D image", "put exactly one 2D page in each slice file"
        )
    return bilevel_to_grey(data)


class SliceFiles:
    """The slice files of a folder as one (Z, Y, X) array: a file is read when its slice is indexed, and checked
    against the first file's shape and dtype."""

    def __init__(self, files: list[Path]) -> None:
        """Read the first slice (it gives the shape and dtype)."""
        self._files = files
        self._first = read_slice(files[0])
        self.shape = (len(files), *self._first.shape)
        self.dtype = self._first.dtype

    def __getitem__(self, index: tuple[slice, ...]) -> np.ndarray:
        """The block `index` (one slice per axis), one file per slice."""
        crop = index[1:]
        slices = range(*index[0].indices(len(self._files)))
        out = np.empty((len(slices), *self._first[crop].shape), self.dtype)
        for i, z in enumerate(slices):
            out[i] = self._slice(z)[crop]
        return out

    def _slice(self, z: int) -> np.ndarray:
        """Slice `z`, which must have the first slice's shape and dtype."""
        if z == 0:
            return self._first
        path, data, first = self._files[z], read_slice(self._files[z]), self._first
        if data.shape != first.shape or data.dtype != first.dtype:
            raise error(
                path,
                f"slice has shape {data.shape} {data.dtype} but {self._files[0].name} has {first.shape} {first.dtype}",
                "all slices of a folder must have the same size and bit depth",
            )
        return data


class SliceFolderReader(VolumeReader):
    """A folder of 2D greyscale slices, all PNG or all TIFF, ordered by the numbers in their names."""

    kind = "slice folder"
    suffixes = ()

    def claims(self, path: Path) -> bool:
        """Any folder (the registry asks the readers of folder formats, zarr, first)."""
        return path.is_dir()

    def open(self, path: Path, key: str | None = None) -> OpenArray:
        """List the slices and read the first (`key` is not used)."""
        return OpenArray(SliceFiles(slice_files(path)), self.kind)

"""HDF5 (`.h5`, `.hdf5`): one dataset, chosen by `key`, read chunk by chunk by h5py; pixel size `element_size_um`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bundle.data.readers.base import OpenArray, PixelSize, VolumeReader, error, listing, unreadable


def dataset_names(handle: Any) -> list[str]:
    """List the full names of all datasets in an open HDF5 file."""
    import h5py

    names: list[str] = []
    handle.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return names


def choose_dataset(path: Path, handle: Any, key: str | None) -> Any:
    """Dataset `key` (or the only dataset) of an open HDF5 file, or a one-line InputError listing the choices."""
    names = dataset_names(handle)
    if not names:
        raise error(path, "HDF5 file contains no dataset", "write the volume into a dataset, e.g. 'raw'")
    if key is None and len(names) > 1:
        raise error(path, f"HDF5 file has {len(names)} datasets ({listing(names)})", "choose one with key=<name>")
    name = names[0] if key is None else key.strip("/")
    if name not in names:
        raise error(path, f"HDF5 file has no dataset '{key}'", f"use one of: {listing(names)}")
    return handle[name]


class Hdf5Reader(VolumeReader):
    """HDF5 files; `key` names the dataset (None: the file's only one)."""

    kind = "HDF5"
    suffixes = (".h5", ".hdf5")

    def open(self, path: Path, key: str | None = None) -> OpenArray:
        """Open the file and its dataset; h5py then reads only the chunks a block needs."""
        import h5py

        try:
            handle = h5py.File(path, "r")
        except Exception as exc:
            raise unreadable(path, self.kind, exc) from exc
        try:
            dataset = choose_dataset(path, handle, key)
        except BaseException:
            handle.close()
            raise
        return OpenArray(dataset, f"HDF5 dataset '{dataset.name}'", handle.close)

    def _element_size_nm(self, path: Path, key: str | None) -> tuple[float, ...] | None:
        """The dataset's `element_size_um` attribute ((z,) y, x, as ilastik and Fiji write it) in nm, or None."""
        with self.open(path, key) as opened:
            if "element_size_um" not in opened.array.attrs:
                return None
            return tuple(float(v) * 1e3 for v in np.atleast_1d(opened.array.attrs["element_size_um"]))

    def pixel_size(self, path: Path, key: str | None = None) -> PixelSize | None:
        """(y, x) of the dataset's `element_size_um` attribute (its last two values)."""
        sizes = self._element_size_nm(path, key)
        return (sizes[-2], sizes[-1]) if sizes is not None and len(sizes) >= 2 else None

    def z_spacing(self, path: Path, key: str | None = None) -> float | None:
        """z of the dataset's `element_size_um` attribute, when it holds three values (z, y, x)."""
        sizes = self._element_size_nm(path, key)
        return sizes[0] if sizes is not None and len(sizes) == 3 else None

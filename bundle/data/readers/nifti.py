"""NIfTI (`.nii`, `.nii.gz`): nibabel's lazy proxy, whose [x, y, z] axes are turned into (Z, Y, X)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bundle.data.readers.base import GREY_FIX, OpenArray, PixelSize, VolumeReader, error, unreadable


class ReversedAxes:
    """nibabel's data proxy with its axes reversed ([x, y, z] -> [z, y, x]); only the indexed block is read, with
    the file's scl_slope/scl_inter applied."""

    def __init__(self, proxy: Any, dtype: np.dtype) -> None:
        """Wrap `proxy`, whose scaled voxels have `dtype`."""
        self._proxy = proxy
        self.shape = tuple(proxy.shape)[::-1]
        self.dtype = dtype

    def __getitem__(self, index: tuple[slice, ...]) -> np.ndarray:
        """The block `index` (one slice per reversed axis)."""
        return np.ascontiguousarray(np.asanyarray(self._proxy[index[::-1]]).T)


class NiftiReader(VolumeReader):
    """NIfTI-1/2 volumes; colour (RGB) voxel types are refused."""

    kind = "NIfTI"
    suffixes = (".nii", ".nii.gz")

    def open(self, path: Path, key: str | None = None) -> OpenArray:
        """Open the header and data proxy (`key` is not used)."""
        import nibabel as nib

        try:
            proxy = nib.load(str(path)).dataobj
            dtype = np.asanyarray(proxy[(0,) * len(proxy.shape)]).dtype  # the dtype after scl_slope/inter
        except Exception as exc:
            raise unreadable(path, self.kind, exc) from exc
        if dtype.fields is not None:
            raise error(path, f"NIfTI stores colour voxels ({dtype})", GREY_FIX)
        return OpenArray(ReversedAxes(proxy, dtype), self.kind)

    def pixel_size(self, path: Path, key: str | None = None) -> PixelSize | None:
        """(y, x) = the zooms of nibabel's axes 1 and 0 (read as Y and X), in the header's spatial unit."""
        import nibabel as nib

        header = nib.load(str(path)).header
        unit = header.get_xyzt_units()[0]
        zooms = header.get_zooms()
        if unit == "unknown" or len(zooms) < 2:
            return None
        per_unit = {"meter": 1e9, "mm": 1e6, "micron": 1e3}[unit]
        return zooms[1] * per_unit, zooms[0] * per_unit

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

    def _zooms_nm(self, path: Path) -> tuple[float, ...] | None:
        """nibabel's zooms of the spatial axes (x, y, z order) in nm; None when the header's spatial unit is
        unknown."""
        import nibabel as nib

        header = nib.load(str(path)).header
        unit = header.get_xyzt_units()[0]
        if unit == "unknown":
            return None
        per_unit = {"meter": 1e9, "mm": 1e6, "micron": 1e3}[unit]
        return tuple(float(zoom) * per_unit for zoom in header.get_zooms()[:3])

    def pixel_size(self, path: Path, key: str | None = None) -> PixelSize | None:
        """(y, x) = the zooms of nibabel's axes 1 and 0 (read as Y and X), in the header's spatial unit."""
        zooms = self._zooms_nm(path)
        if zooms is None or len(zooms) < 2:
            return None
        return zooms[1], zooms[0]

    def z_spacing(self, path: Path, key: str | None = None) -> float | None:
        """The zoom of nibabel's axis 2 (read as Z: the third pixdim), in the header's spatial unit."""
        zooms = self._zooms_nm(path)
        return zooms[2] if zooms is not None and len(zooms) >= 3 else None

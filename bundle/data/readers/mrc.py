"""MRC (`.mrc`, `.mrcs`, `.rec`, `.map`, as cryo-EM and IMOD write them): memory-mapped; pixel size from the header."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bundle.data.readers.base import OpenArray, PixelSize, VolumeReader, unreadable

NM_PER_ANGSTROM = 0.1


class CopiedBlocks:
    """A memory-mapped array whose blocks are copied out, so that they outlive the file's closing."""

    def __init__(self, data: np.ndarray) -> None:
        """Wrap the memory map `data`."""
        self._data = data
        self.shape = data.shape
        self.dtype = data.dtype

    def __getitem__(self, index: tuple[slice, ...]) -> np.ndarray:
        """A copy of the block `index`."""
        return np.array(self._data[index])


class MrcReader(VolumeReader):
    """MRC2014 files, checked strictly (mrcfile's permissive=False): a 2D file is one slice, a stack or volume is
    (Z, Y, X)."""

    kind = "MRC"
    suffixes = (".mrc", ".mrcs", ".rec", ".map")

    def _mmap(self, path: Path) -> Any:
        """The open, memory-mapped MrcFile; a file that is not valid MRC is a one-line InputError."""
        import mrcfile

        try:
            return mrcfile.mmap(path, mode="r", permissive=False)
        except Exception as exc:  # mrcfile raises ValueError for a bad header or a truncated file
            raise unreadable(path, self.kind, exc) from exc

    def open(self, path: Path, key: str | None = None) -> OpenArray:
        """Memory-map the data (`key` is not used)."""
        mrc = self._mmap(path)
        return OpenArray(CopiedBlocks(mrc.data), self.kind, mrc.close)

    def _voxel_size(self, path: Path) -> tuple[float, float, float]:
        """The header's voxel size (z, y, x) in Å."""
        with self._mmap(path) as mrc:
            size = mrc.voxel_size
            return float(size.z), float(size.y), float(size.x)

    def pixel_size(self, path: Path, key: str | None = None) -> PixelSize | None:
        """The header's voxel size (y, x), in Å there. 0 (unset) and IMOD's default 1 Å state none."""
        _, y, x = self._voxel_size(path)
        if (y, x) in ((0.0, 0.0), (1.0, 1.0)):
            return None
        return y * NM_PER_ANGSTROM, x * NM_PER_ANGSTROM

    def z_spacing(self, path: Path, key: str | None = None) -> float | None:
        """The header's voxel size z, in Å there. 0 (unset, as in a 2D file) and IMOD's default 1 Å state none."""
        z, _, _ = self._voxel_size(path)
        return None if z in (0.0, 1.0) else z * NM_PER_ANGSTROM

"""One reader per volume format, and the registry that picks it from the path (after nnU-Net's `imageio`).

Each reader (`VolumeReader`) claims its paths, opens a file without reading its data (`OpenArray`: the array as
stored, indexed lazily by blocks) and reads the pixel size and z spacing the format states. `reader_for(path)`
returns the first reader that claims a path; folder formats (zarr) are asked before a plain folder is taken as a
folder of slices.
`bundle.data.io` builds `read_volume` and `SliceVolume` on it.
"""

from __future__ import annotations

import os
from pathlib import Path

from bundle.data.readers.base import OpenArray, PathLike, PixelSize, VolumeReader, error
from bundle.data.readers.folder import SLICE_SUFFIXES, SliceFolderReader
from bundle.data.readers.hdf5 import Hdf5Reader
from bundle.data.readers.mrc import MrcReader
from bundle.data.readers.nifti import NiftiReader
from bundle.data.readers.png import PngReader
from bundle.data.readers.tiff import TiffReader
from bundle.data.readers.zarr import ZarrReader

__all__ = ["READERS", "SLICE_SUFFIXES", "VOLUME_SUFFIXES", "OpenArray", "PixelSize", "VolumeReader", "reader_for"]

READERS: tuple[VolumeReader, ...] = (TiffReader(), PngReader(), NiftiReader(), Hdf5Reader(), MrcReader(), ZarrReader(),
                                     SliceFolderReader())  # fmt: skip
VOLUME_SUFFIXES = tuple(suffix for reader in READERS for suffix in reader.suffixes)


def reader_for(path: PathLike) -> VolumeReader:
    """The reader of an existing file or folder; a missing path or an unknown type is a one-line InputError."""
    path = Path(os.fspath(path)).expanduser()
    if not path.exists():
        raise error(path, "does not exist", "check the path (relative paths start from the current directory)")
    for reader in READERS:
        if reader.claims(path):
            return reader
    raise error(
        path,
        f"unsupported file type '{''.join(path.suffixes) or '(no extension)'}'",
        "pass a multi-page .tif/.tiff, a folder of .png/.tif slices, a .nii/.nii.gz, an .h5/.hdf5, an .mrc or a "
        ".zarr/.ome.zarr folder",
    )

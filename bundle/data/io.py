"""Read and write EM volumes as (Z, Y, X) arrays: multi-page TIFF, slice folders, NIfTI, HDF5, zarr, OME-Zarr, MRC.

The formats are `bundle.data.readers`' (one reader per format); this module checks what they read as a volume,
reads masks and instance labels, parses slice selections and writes outputs (TIFF, or OME-Zarr by the path).
Every problem with a user's file is raised as a one-line `InputError` naming the file, the problem and the fix.
`EMReader` exposes the same reading to MONAI's `LoadImage`/`LoadImaged` without any axis change or channel.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from bundle.data.readers import SLICE_SUFFIXES, VOLUME_SUFFIXES, PixelSize, reader_for
from bundle.data.readers.base import GREY_FIX, PathLike, channel_name, read_block
from bundle.data.readers.tiff import TIFF_SUFFIXES
from bundle.data.readers.zarr import write_ome_zarr
from bundle.errors import InputError
from bundle.errors import input_error as _error
from bundle.outputs import atomic_output

__all__ = [
    "EMReader",
    "SliceVolume",
    "SLICE_SUFFIXES",
    "VOLUME_SUFFIXES",
    "check_finite",
    "check_same_shape",
    "instances_from_mask",
    "is_zarr_path",
    "parse_slices",
    "read_instances",
    "read_label_instances",
    "read_mask",
    "read_volume",
    "select_slices",
    "write_tiff",
    "write_volume",
]


# ----------------------------------------------------------------------------------------------------------- volumes
def _check_layout(shape: tuple[int, ...], dtype: np.dtype, path: PathLike) -> tuple[int, int, int]:
    """Validate the shape and dtype of a volume as (Z, Y, X) (a 2D image is one slice); raise InputError otherwise."""
    shape = tuple(int(n) for n in shape)
    if dtype.kind not in "biuf":
        raise _error(path, f"unsupported data type {dtype}", "store the volume as integers or floats")
    if len(shape) == 4 and shape[-1] in (3, 4):
        n = shape[-1]
        raise _error(path, f"image has shape {shape}: {n} channels ({channel_name(n)})", GREY_FIX)
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3:
        raise _error(path, f"array has {len(shape)} dimensions (shape {shape})", "pass one 3D (Z, Y, X) greyscale volume")
    if 0 in shape:
        raise _error(path, f"volume is empty (shape {shape})", "pass a volume with at least one voxel")
    depth, short, long = shape[0], min(shape[1:]), max(shape[1:])
    if short * 8 < long and short < depth:  # e.g. a (Y, X, Z) stack read as Y slices of X x Z
        raise _error(path, f"slices of {shape[1]} x {shape[2]} pixels in {depth} slices: one axis is far shorter "
                     "than the others, as when a (Y, X, Z) stack is read as (Z, Y, X)",
                     "store the volume with its slices on the first axis, (Z, Y, X)")  # fmt: skip
    return shape  # type: ignore[return-value]


def check_finite(data: np.ndarray, path: PathLike) -> np.ndarray:
    """Return `data` if it holds no NaN/inf values, else raise InputError."""
    if data.dtype.kind == "f":
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if bad:
            raise _error(path, f"volume contains {bad} NaN/inf values", "replace them with finite numbers before use")
    return data


def read_volume(path: PathLike, key: str | None = None) -> np.ndarray:
    """Read a volume file or folder as a (Z, Y, X) array in its stored dtype (`key`: the HDF5 dataset or zarr array
    of a file that holds several)."""
    with SliceVolume(path, key) as volume:
        return check_finite(volume.read(), volume.path)


class SliceVolume:
    """A (Z, Y, X) volume read one 2D slice (or one block) at a time, for volumes larger than memory.

    The format's reader (`bundle.data.readers.reader_for`) reads only what is asked for: TIFF page by page, HDF5
    and zarr chunk by chunk, MRC through a memory map, NIfTI through nibabel's `dataobj` proxy, slice folders one
    file at a time. Opening checks the format, dtype and axes as `read_volume` does (a 2D image is a volume of one
    slice; 4D is refused); `volume[z]` returns slice z as (Y, X) and `volume.read(z, y, x)` a block, in the stored
    dtype. Values are not checked here: `bundle.data.dataset.normalize_slice` refuses NaN/inf and constant
    slices. Use it as a context manager, or call `close`.

    Attributes:
        path: the file or folder.
        shape: (Z, Y, X).
        dtype: the stored data type.
    """

    def __init__(self, path: PathLike, key: str | None = None) -> None:
        """Open `path` (`key`: HDF5 dataset or zarr array name, None = the only one) and read its shape and dtype."""
        self.path = Path(os.fspath(path)).expanduser()
        self._file = reader_for(self.path).open(self.path, key)
        try:
            self.dtype = np.dtype(self._file.array.dtype)
            self.shape = _check_layout(self._file.array.shape, self.dtype, self.path)
        except BaseException:
            self.close()
            raise
        self._stored_2d = len(self._file.array.shape) == 2

    def __len__(self) -> int:
        """Number of slices."""
        return self.shape[0]

    def __getitem__(self, z: int) -> np.ndarray:
        """Read slice `z` (0 <= z < len) as a (Y, X) array in the stored dtype."""
        if not 0 <= z < len(self):
            raise IndexError(f"slice {z} is outside 0-{len(self) - 1}")
        return self._block(slice(int(z), int(z) + 1), slice(None), slice(None), f"slice {z}")[0]

    def read(self, z: slice = slice(None), y: slice = slice(None), x: slice = slice(None)) -> np.ndarray:
        """Read the block `[z, y, x]` (slices; default: all) as a (Z, Y, X) array in the stored dtype."""
        return self._block(z, y, x, self._file.what)

    def _block(self, z: slice, y: slice, x: slice, what: str) -> np.ndarray:
        """The block `[z, y, x]`; a read failure is a one-line InputError naming `what`."""
        if not self._stored_2d:
            return read_block(self.path, self._file, (z, y, x), what)
        return read_block(self.path, self._file, (y, x), what)[np.newaxis][z]

    def close(self) -> None:
        """Release the open file, if any."""
        self._file.close()
        self._file.close = lambda: None

    def __enter__(self) -> SliceVolume:
        """Use as a context manager that closes the file."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the file."""
        self.close()


def _binarise(data: np.ndarray, threshold: int, path: PathLike) -> np.ndarray:
    """uint8 0/1 mask: foreground is `> threshold` (0/1 integer masks are taken as they are)."""
    if data.dtype.kind == "b" or (data.dtype.kind in "iu" and data.min() >= 0 and data.max() <= 1):
        return (data > 0).astype(np.uint8)
    mask = (data > threshold).astype(np.uint8)
    top = data.max()
    if top > 0 and not mask.any():
        raise _error(
            path,
            f"mask has values up to {top} but none above the threshold {threshold}",
            "pass a 0/255 or 0/1 mask, or set the threshold to the mask's scale",
        )
    return mask


def _as_instances(data: np.ndarray, path: PathLike) -> np.ndarray:
    """Instance ids (0 = background) as int32, or int64 when ids exceed the int32 range."""
    if data.dtype.kind == "b":
        return data.astype(np.int32)
    if data.dtype.kind == "f" and not np.array_equal(data, np.round(data)):
        raise _error(path, f"instance labels are {data.dtype} with non-integer values", "store ids as integers")
    low, high = data.min(), data.max()
    if low < 0:
        raise _error(path, f"instance labels contain negative ids (min {low})", "use 0 for background and ids > 0")
    if high > np.iinfo(np.int64).max:
        raise _error(path, f"instance ids exceed the int64 range (max {high})", "relabel the instances consecutively")
    return data.astype(np.int32 if high <= np.iinfo(np.int32).max else np.int64)


def read_mask(path: PathLike, key: str | None = None, threshold: int = 127) -> np.ndarray:
    """Read a binary mask as uint8 0/1: foreground is `> threshold` (0/1 integer masks are taken as they are)."""
    return _binarise(read_volume(path, key), threshold, path)


def read_instances(path: PathLike, key: str | None = None) -> np.ndarray:
    """Read an instance-label volume (0 = background) as int32, or int64 when ids exceed the int32 range."""
    return _as_instances(read_volume(path, key), path)


def read_label_instances(path: PathLike, key: str | None = None, threshold: int = 127) -> np.ndarray:
    """Instance ids (Z, Y, X) of a label file: 8-bit volumes and two-valued ones (0/1, 0/255 of any integer type)
    are masks split into 2D components, others ids. An 8-bit file that is mostly grey values (an EM image passed
    as labels) is refused."""
    data = read_volume(path, key)
    if data.dtype == np.uint8 and data.size:
        grey = np.count_nonzero((data > 0) & (data < 255)) / data.size
        # anti-aliased masks have a few % of edge values (VNC III: up to 7 %); EM images ~100 %, of many levels
        if grey > 0.5 and np.unique(data[:: max(1, len(data) // 8)]).size > 16:
            raise _error(path, f"{grey:.0%} of its pixels are grey values: an image, not labels",
                         "pass the instance labels or a 0/255 mask of this volume")  # fmt: skip
    if data.dtype.kind in "iu" and data.dtype != np.uint8 and data.size and data.min() == 0:
        if np.count_nonzero(data) == np.count_nonzero(data == data.max()):  # two values: 0/1 or 0/255 in 16/32 bits
            return instances_from_mask(data > 0)  # one id per component, not one per slice
    if data.dtype in (np.uint8, np.bool_):  # 0/1, 0/255 and anti-aliased masks (VNC: > 127) alike
        return instances_from_mask(_binarise(data, threshold, path))
    return _as_instances(data, path)


def instances_from_mask(mask: np.ndarray) -> np.ndarray:
    """Label 2D connected components per slice (4-neighbourhood), ids unique across the volume, as int32.

    Connectivity 1 (4-neighbourhood) keeps two mitochondria that touch only at a corner apart, which matches how
    per-slice instance annotations are drawn. A 2D mask is labelled as one slice and returned 2D.
    """
    from skimage.measure import label

    mask = np.asarray(mask)
    if mask.ndim == 2:
        return label(mask > 0, connectivity=1).astype(np.int32)
    if mask.ndim != 3:
        raise ValueError(f"instances_from_mask expects a 2D or 3D mask, got shape {mask.shape}")
    out = np.zeros(mask.shape, dtype=np.int64)
    offset = 0
    for z in range(mask.shape[0]):
        lab, n = label(mask[z] > 0, connectivity=1, return_num=True)
        out[z] = np.where(lab > 0, lab + offset, 0)
        offset += n
    if offset > np.iinfo(np.int32).max:
        raise ValueError(f"{offset} components do not fit int32")
    return out.astype(np.int32)


# ----------------------------------------------------------------------------------------------------------- slices
def _parse_slice_string(spec: str, where: str) -> list[int]:
    """Parse '0-119', '120-164', '0,5,7-9' (inclusive ranges) or '0-119:3' (every 3rd) into indices; InputError if malformed."""
    bad = _error(where, f"cannot parse slice spec '{spec}'", "use e.g. '0-119', '0-119:3' (every 3rd) or '0,5,7-9' (inclusive)")
    text = spec.replace("\u2013", "-").replace("\u2014", "-").replace(" ", "")
    if not text:
        raise bad
    out: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+))?)?", part)
        if match is None or int(match.group(3) or 1) == 0:
            raise bad
        start = int(match.group(1))
        stop = int(match.group(2)) if match.group(2) is not None else start
        if stop < start:
            raise _error(where, f"slice range '{part}' runs backwards", f"write it as '{stop}-{start}'")
        out.extend(range(start, stop + 1, int(match.group(3) or 1)))
    return out


def parse_slices(spec: str | Sequence[int] | None, depth: int, path: str = "") -> list[int]:
    """Turn a slice spec (None or 'all' = all, one index, '0-119', '0-119:3', '0,5,7-9' or a list of ints) into
    indices checked against `depth` (`monai.bundle run --slices 2` passes an int)."""
    where = path or "slices"
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, (bool, np.bool_)):
        spec = [int(spec)]
    elif not isinstance(spec, (str, Sequence, np.ndarray, type(None))):
        raise _error(where, f"slice spec {spec!r} is not a slice selection", "pass e.g. 'all', '7', '0-119' or '0-119:3'")
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "all"):
        return list(range(depth))
    if isinstance(spec, str):
        indices = _parse_slice_string(spec, where)
    else:
        items = list(spec)
        if not all(isinstance(i, (int, np.integer)) and not isinstance(i, (bool, np.bool_)) for i in items):
            raise _error(where, f"slice list {items!r} holds non-integers", "pass integer slice indices")
        indices = [int(i) for i in items]
    if not indices:
        raise _error(where, "slice selection is empty", "select at least one slice, e.g. '0-119'")
    outside = [i for i in indices if not 0 <= i < depth]
    if outside:
        raise _error(
            where,
            f"slice spec '{_spec_text(spec)}' selects slice {outside[0]} but the volume has {depth} slices",
            f"use indices 0-{depth - 1}",
        )
    seen: set[int] = set()
    for i in indices:
        if i in seen:
            raise _error(where, f"slice {i} is selected twice in '{_spec_text(spec)}'", "list each slice once")
        seen.add(i)
    return indices


def _spec_text(spec: str | Sequence[int]) -> str:
    """Render a slice spec for messages (long lists shortened)."""
    if isinstance(spec, str):
        return spec
    items = [int(i) for i in spec]
    return ",".join(map(str, items[:8])) + (",..." if len(items) > 8 else "")


def select_slices(volume: np.ndarray, slices: str | Sequence[int] | None, path: str = "") -> np.ndarray:
    """Return the selected Z slices of a (Z, Y, X) volume (a view when they form one ascending run)."""
    indices = parse_slices(slices, int(volume.shape[0]), path)
    if indices == list(range(indices[0], indices[-1] + 1)):
        return volume[indices[0] : indices[-1] + 1]
    return volume[indices]


def check_same_shape(a: np.ndarray, b: np.ndarray, path_a: str, path_b: str) -> None:
    """Raise InputError when an image and its label volume differ in shape."""
    if tuple(a.shape) != tuple(b.shape):
        raise InputError(
            f"image {path_a} has shape {tuple(a.shape)} but label {path_b} has shape {tuple(b.shape)}; "
            "pass the label volume that belongs to this image"
        )


# ----------------------------------------------------------------------------------------------------------- writing
def write_tiff(path: PathLike, volume: np.ndarray) -> None:
    """Write a (Z, Y, X) (or 2D) array as a zlib-compressed multi-page TIFF, atomically (temp file + os.replace)."""
    import tifffile

    volume = np.asarray(volume)
    if volume.ndim not in (2, 3):
        raise ValueError(f"write_tiff expects a 2D or (Z, Y, X) array, got shape {volume.shape}")
    if volume.dtype == np.bool_:
        volume = volume.astype(np.uint8)
    with atomic_output(path) as tmp:
        tifffile.imwrite(
            tmp,
            volume,
            photometric="minisblack",
            compression="zlib",
            bigtiff=volume.nbytes > 2**31,
            metadata={"axes": "ZYX" if volume.ndim == 3 else "YX"},
        )


def is_zarr_path(path: PathLike) -> bool:
    """True for a path that ends with, or lies in a folder that ends with, `.zarr` (`OUT.ome.zarr`,
    `OUT.ome.zarr/probability`): what is written there is OME-Zarr."""
    return any(part.lower().endswith(".zarr") for part in Path(os.fspath(path)).expanduser().parts)


def write_volume(path: PathLike, volume: np.ndarray, pixel_size: PixelSize | None = None) -> None:
    """Write a (Z, Y, X) (or 2D) array in the format its path names, atomically: a `.tif`/`.tiff` file
    (`write_tiff`), or an OME-Zarr image at a zarr path (`is_zarr_path`: `write_ome_zarr`, with `pixel_size`
    (y, x nm) when known)."""
    final = Path(os.fspath(path)).expanduser()
    if is_zarr_path(final):
        write_ome_zarr(final, volume, pixel_size)
    elif final.name.lower().endswith(TIFF_SUFFIXES):
        write_tiff(final, volume)
    else:
        raise _error(final, f"cannot write file type '{''.join(final.suffixes) or '(no extension)'}'",
                     "name the output .tif/.tiff, or .zarr/.ome.zarr (or a path inside a .zarr folder)")  # fmt: skip


# ----------------------------------------------------------------------------------------------------------- MONAI
class EMReader(ImageReader):
    """MONAI reader for EM volumes: (Z, Y, X) arrays, no channel axis, identity affine (no reorientation).

    `read` only resolves the paths; the file is read in `get_data`. LoadImage catches exceptions raised in a
    reader's `read` and falls back to its other readers (PILReader would silently read the first page of a TIFF),
    so reading in `get_data` lets an InputError reach the user unchanged.
    """

    def __init__(self, key: str | None = None) -> None:
        """Store the HDF5 dataset name to read (None = the only dataset)."""
        super().__init__()
        self.key = key

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """True when every name is a supported volume file or a directory of slices."""
        names = ensure_tuple(filename)
        return bool(names) and all(
            Path(os.fspath(n)).is_dir() or os.fspath(n).lower().endswith(VOLUME_SUFFIXES) for n in names
        )

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> Path | list[Path]:
        """Resolve the file name(s); the data is read lazily in `get_data`."""
        paths = [Path(os.fspath(n)).expanduser() for n in ensure_tuple(data)]
        return paths if len(paths) > 1 else paths[0]

    def get_data(self, img: Path | Sequence[Path]) -> tuple[np.ndarray, dict]:
        """Read the volume(s) and their metadata; several files are stacked on a new first (channel) axis."""
        arrays = [read_volume(path, self.key) for path in ensure_tuple(img)]
        shape = arrays[0].shape
        for path, array in zip(ensure_tuple(img), arrays):
            if array.shape != shape:
                raise _error(path, f"has shape {array.shape} but the first file has {shape}", "load files of one size")
        meta = {
            MetaKeys.SPATIAL_SHAPE: np.asarray(shape),
            MetaKeys.AFFINE: np.eye(len(shape) + 1),
            MetaKeys.ORIGINAL_AFFINE: np.eye(len(shape) + 1),
            MetaKeys.SPACE: SpaceKeys.RAS,
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),  # no channel axis, as NumpyReader with channel_dim=None
        }
        if len(arrays) == 1:
            return arrays[0], meta
        meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0  # stacked files form a new channel axis, as in NumpyReader
        return np.stack(arrays, axis=0), meta

"""Read and write EM volumes as (Z, Y, X) arrays: multi-page TIFF, slice folders, NIfTI, HDF5.

Every problem with a user's file is raised as a one-line `InputError` naming the file, the problem and the fix.
`EMReader` exposes the same reading to MONAI's `LoadImage`/`LoadImaged` without any axis change or channel.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from bundle.errors import InputError
from bundle.errors import input_error as _error
from bundle.outputs import atomic_output

__all__ = [
    "EMReader",
    "SliceVolume",
    "SLICE_SUFFIXES",
    "VOLUME_SUFFIXES",
    "check_same_shape",
    "instances_from_mask",
    "parse_slices",
    "read_instances",
    "read_label_instances",
    "read_mask",
    "read_volume",
    "select_slices",
    "write_tiff",
]

PathLike = str | os.PathLike
TIFF_SUFFIXES = (".tif", ".tiff")
SLICE_SUFFIXES = (".png", *TIFF_SUFFIXES)
NIFTI_SUFFIXES = (".nii", ".nii.gz")
HDF5_SUFFIXES = (".h5", ".hdf5")
VOLUME_SUFFIXES = (*TIFF_SUFFIXES, ".png", *NIFTI_SUFFIXES, *HDF5_SUFFIXES)
GREY_FIX = "convert it to one grey channel (8/16-bit greyscale), e.g. with Fiji (Image > Type > 8-bit) or tifffile"


# ----------------------------------------------------------------------------------------------------------- errors
def _first_line(exc: BaseException) -> str:
    """Return an exception as 'Type: first line of message' (at most 200 characters)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]


def _unreadable(path: PathLike, kind: str, exc: BaseException) -> InputError:
    """InputError for a file that its library could not parse."""
    return _error(path, f"cannot be read as {kind} ({_first_line(exc)})", "check the file is complete and not corrupt")


# ----------------------------------------------------------------------------------------------------------- formats
def _kind(path: Path) -> str:
    """Return 'dir', 'tiff', 'png', 'nifti' or 'hdf5' for a path, or raise InputError."""
    if path.is_dir():
        return "dir"
    name = path.name.lower()
    kinds = {"tiff": TIFF_SUFFIXES, "png": (".png",), "nifti": NIFTI_SUFFIXES, "hdf5": HDF5_SUFFIXES}
    for kind, suffixes in kinds.items():
        if name.endswith(suffixes):
            return kind
    raise _error(
        path,
        f"unsupported file type '{''.join(path.suffixes) or '(no extension)'}'",
        "pass a multi-page .tif/.tiff, a folder of .png/.tif slices, a .nii/.nii.gz or an .h5/.hdf5 file",
    )


def _tiff_series(path: Path, tif: Any) -> Any:
    """The one greyscale image series of an open TiffFile; several series or colour channels are an InputError."""
    series = tif.series
    if not series:
        raise _error(path, "TIFF contains no image", "save the volume again as a multi-page greyscale TIFF")
    if len(series) > 1:
        shapes = ", ".join(str(tuple(s.shape)) for s in series[:4])
        raise _error(
            path,
            f"TIFF holds {len(series)} image series of different shapes ({shapes})",
            "save one (Z, Y, X) stack whose pages all have the same size",
        )
    axes = series[0].axes.upper()
    shape = tuple(series[0].shape)
    if "S" in axes or "C" in axes:
        n = shape[axes.index("S" if "S" in axes else "C")]
        fix = GREY_FIX
        if tif.is_shaped:  # tifffile.imwrite stores a first/last axis of 3 or 4 as RGB(A) by default
            fix += "; if it is really greyscale, write it with tifffile.imwrite(..., photometric='minisblack')"
        raise _error(path, f"image has {n} channels ({_channel_name(n)})", fix)
    return series[0]


def _read_tiff(path: Path) -> np.ndarray:
    """Read all pages of a TIFF as (Z, Y, X); a single 2D page becomes (1, Y, X)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            data = _tiff_series(path, tif).asarray()
    except InputError:
        raise
    except Exception as exc:  # tifffile raises many types for truncated or foreign files
        raise _unreadable(path, "TIFF", exc) from exc
    return data[np.newaxis] if data.ndim == 2 else data


def _channel_name(n: int) -> str:
    """Name a channel count for messages."""
    return {2: "grey + alpha", 3: "RGB", 4: "RGBA"}.get(n, "multi-channel")


def _read_png(path: Path) -> np.ndarray:
    """Read one 2D PNG as (Y, X) (1-bit becomes uint8 0/255); colour or grey+alpha PNGs are rejected."""
    import imageio.v3 as iio  # installed with scikit-image

    try:
        data = np.asarray(iio.imread(path))
    except Exception as exc:
        raise _unreadable(path, "PNG", exc) from exc
    if data.ndim == 3:
        raise _error(path, f"image has {data.shape[-1]} channels ({_channel_name(data.shape[-1])})", GREY_FIX)
    if data.ndim != 2:
        raise _error(path, f"PNG decoded to shape {data.shape}", "save each slice as a single 2D greyscale PNG")
    return _bilevel_to_grey(data)


def _read_nifti(path: Path) -> np.ndarray:
    """Read a NIfTI file (nibabel indexes [x, y, z]) as (Z, Y, X) in the stored dtype."""
    import nibabel as nib

    try:
        data = np.asanyarray(nib.load(str(path)).dataobj)
    except Exception as exc:
        raise _unreadable(path, "NIfTI", exc) from exc
    if data.dtype.fields is not None:
        raise _error(path, f"NIfTI stores colour voxels ({data.dtype})", GREY_FIX)
    if data.ndim in (2, 3):
        data = np.ascontiguousarray(data.T)  # (x, y[, z]) -> ([z,] y, x)
    return data[np.newaxis] if data.ndim == 2 else data


def _hdf5_datasets(handle: Any) -> list[str]:
    """List the full names of all datasets in an open HDF5 file."""
    import h5py

    names: list[str] = []
    handle.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return names


def _read_hdf5(path: Path, key: str | None) -> np.ndarray:
    """Read dataset `key` (or the only dataset) of an HDF5 file."""
    import h5py

    try:
        handle = h5py.File(path, "r")
    except Exception as exc:
        raise _unreadable(path, "HDF5", exc) from exc
    with handle:
        dataset = _hdf5_dataset(path, handle, key)
        try:
            return np.asarray(dataset[()])
        except Exception as exc:
            raise _unreadable(path, f"HDF5 dataset '{dataset.name}'", exc) from exc


def _hdf5_dataset(path: Path, handle: Any, key: str | None) -> Any:
    """Dataset `key` (or the only dataset) of an open HDF5 file, or a one-line InputError listing the choices."""
    names = _hdf5_datasets(handle)
    listing = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
    if not names:
        raise _error(path, "HDF5 file contains no dataset", "write the volume into a dataset, e.g. 'raw'")
    if key is None and len(names) > 1:
        raise _error(path, f"HDF5 file has {len(names)} datasets ({listing})", "choose one with key=<name>")
    name = names[0] if key is None else key.strip("/")
    if name not in names:
        raise _error(path, f"HDF5 file has no dataset '{key}'", f"use one of: {listing}")
    return handle[name]


# ----------------------------------------------------------------------------------------------------------- folders
def _natural_key(name: str) -> tuple:
    """Sort key that compares digit runs as numbers: '2.png' < '10.png'; text compares case-insensitively."""
    parts = re.split(r"(\d+)", name)
    return tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts))


def _slice_files(folder: Path) -> list[Path]:
    """List the PNG/TIFF slices of a folder in numeric order, ignoring hidden files and other types."""
    files = [
        p for p in folder.iterdir() if not p.name.startswith(".") and p.suffix.lower() in SLICE_SUFFIXES and p.is_file()
    ]
    if not files:
        raise _error(folder, "folder contains no .png/.tif/.tiff slices", "point to the folder that holds the slices")
    kinds = {"png" if p.suffix.lower() == ".png" else "tiff" for p in files}
    if len(kinds) > 1:
        raise _error(folder, "folder mixes .png and .tif slices", "keep one volume of one file type per folder")
    files.sort(key=lambda p: (_natural_key(p.stem), p.name))
    for prev, cur in zip(files, files[1:]):
        if _natural_key(prev.stem) == _natural_key(cur.stem):
            raise _error(
                cur, f"has the same slice number as {prev.name}", "rename the slices so each number occurs once"
            )
    return files


def _bilevel_to_grey(data: np.ndarray) -> np.ndarray:
    """Return a 1-bit (bool) slice as uint8 0/255, as a viewer shows it, so it stacks with 8-bit slices."""
    return data.astype(np.uint8) * np.uint8(255) if data.dtype == np.bool_ else data


def _read_slice(path: Path) -> np.ndarray:
    """Read one 2D slice file as (Y, X); 1-bit slices become uint8 0/255."""
    if path.suffix.lower() == ".png":
        return _read_png(path)
    data = _read_tiff(path)
    if data.ndim != 3 or data.shape[0] != 1:
        raise _error(
            path, f"slice file holds shape {data.shape}, not one 2D image", "put exactly one 2D page in each slice file"
        )
    return _bilevel_to_grey(data[0])


def _read_folder(folder: Path) -> np.ndarray:
    """Stack a folder of 2D slices (numeric file-name order) into (Z, Y, X)."""
    files = _slice_files(folder)
    first = _read_slice(files[0])
    out = np.empty((len(files), *first.shape), dtype=first.dtype)
    out[0] = first
    for z, path in enumerate(files[1:], start=1):
        out[z] = _check_like_first(_read_slice(path), path, first, files[0])
    return out


def _check_like_first(data: np.ndarray, path: Path, first: np.ndarray, first_path: Path) -> np.ndarray:
    """Return a folder's slice if it has the first slice's shape and dtype, else raise InputError."""
    if data.shape != first.shape or data.dtype != first.dtype:
        raise _error(
            path,
            f"slice has shape {data.shape} {data.dtype} but {first_path.name} has {first.shape} {first.dtype}",
            "all slices of a folder must have the same size and bit depth",
        )
    return data


# ----------------------------------------------------------------------------------------------------------- volumes
def _check_layout(shape: tuple[int, ...], dtype: np.dtype, path: PathLike) -> tuple[int, int, int]:
    """Validate the shape and dtype of a volume as (Z, Y, X) (a 2D image is one slice); raise InputError otherwise."""
    shape = tuple(int(n) for n in shape)
    if dtype.kind not in "biuf":
        raise _error(path, f"unsupported data type {dtype}", "store the volume as integers or floats")
    if len(shape) == 4 and shape[-1] in (3, 4):
        n = shape[-1]
        raise _error(path, f"image has shape {shape}: {n} channels ({_channel_name(n)})", GREY_FIX)
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


def _check_volume(data: np.ndarray, path: PathLike) -> np.ndarray:
    """Validate a loaded array as a (Z, Y, X) volume (2D becomes (1, Y, X)); raise InputError otherwise."""
    data = data.reshape(_check_layout(data.shape, data.dtype, path))
    if data.dtype.kind == "f":
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if bad:
            raise _error(path, f"volume contains {bad} NaN/inf values", "replace them with finite numbers before use")
    return data


def read_volume(path: PathLike, key: str | None = None) -> np.ndarray:
    """Read a volume file or slice folder as a (Z, Y, X) array in its stored dtype (`key` is used only for HDF5)."""
    path = Path(os.fspath(path)).expanduser()
    if not path.exists():
        raise _error(path, "does not exist", "check the path (relative paths start from the current directory)")
    kind = _kind(path)
    if kind == "dir":
        data = _read_folder(path)
    elif kind == "tiff":
        data = _read_tiff(path)
    elif kind == "png":
        data = _read_png(path)
    elif kind == "nifti":
        data = _read_nifti(path)
    else:
        data = _read_hdf5(path, key)
    return _check_volume(data, path)


SliceReader = Callable[[int], np.ndarray]


class SliceVolume:
    """A (Z, Y, X) volume read one 2D slice at a time, for volumes larger than memory.

    TIFF page by page, HDF5 slice by slice (h5py reads only the chunks it needs), NIfTI through nibabel's
    `dataobj` proxy, slice folders one file at a time. Opening checks the format, dtype and axes as `read_volume`
    does (a 2D image is a volume of one slice; 4D is refused); `volume[z]` returns slice z as (Y, X) in its
    stored dtype. Values are not checked here: `bundle.data.dataset.normalize_slice` refuses NaN/inf and
    constant slices. Use it as a context manager, or call `close`.
    """

    def __init__(self, path: PathLike, key: str | None = None) -> None:
        """Open `path` (`key`: HDF5 dataset name, None = the only one) and read its shape and dtype."""
        self.path = Path(os.fspath(path)).expanduser()
        if not self.path.exists():
            raise _error(self.path, "does not exist", "check the path (relative paths start from the current directory)")
        self._close: Callable[[], None] = lambda: None
        opener = {"dir": self._open_folder, "tiff": self._open_tiff, "png": self._open_png,
                  "nifti": self._open_nifti, "hdf5": self._open_hdf5}[_kind(self.path)]  # fmt: skip
        try:
            shape, dtype, self._read = opener(key)
            self.shape = _check_layout(shape, np.dtype(dtype), self.path)
        except BaseException:
            self.close()
            raise
        self.dtype = np.dtype(dtype)

    def __len__(self) -> int:
        """Number of slices."""
        return self.shape[0]

    def __getitem__(self, z: int) -> np.ndarray:
        """Read slice `z` (0 <= z < len) as a (Y, X) array in the stored dtype."""
        if not 0 <= z < len(self):
            raise IndexError(f"slice {z} is outside 0-{len(self) - 1}")
        try:
            data = np.asarray(self._read(int(z)))
        except InputError:
            raise
        except Exception as exc:
            raise _unreadable(self.path, f"slice {z}", exc) from exc
        return data.reshape(self.shape[1:])

    def close(self) -> None:
        """Release the open file, if any."""
        self._close()
        self._close = lambda: None

    def __enter__(self) -> SliceVolume:
        """Use as a context manager that closes the file."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the file."""
        self.close()

    def _open_tiff(self, key: str | None) -> tuple[tuple[int, ...], np.dtype, SliceReader]:
        """One page per slice; a volume whose pages are not its slices (rare) is read whole once."""
        import tifffile

        try:
            tif = tifffile.TiffFile(self.path)
        except Exception as exc:
            raise _unreadable(self.path, "TIFF", exc) from exc
        self._close = tif.close
        try:
            series = _tiff_series(self.path, tif)
        except InputError:
            raise
        except Exception as exc:
            raise _unreadable(self.path, "TIFF", exc) from exc
        shape = tuple(series.shape)
        if len(shape) == 2:
            return shape, series.dtype, lambda z: series.asarray()
        if len(shape) == 3 and len(series.pages) == shape[0]:
            return shape, series.dtype, lambda z: tif.asarray(key=z, series=0)
        whole = functools.cache(series.asarray)
        return shape, series.dtype, lambda z: whole()[z]

    def _open_png(self, key: str | None) -> tuple[tuple[int, ...], np.dtype, SliceReader]:
        """A single 2D PNG is a volume of one slice."""
        data = _read_png(self.path)
        return data.shape, data.dtype, lambda z: data

    def _open_nifti(self, key: str | None) -> tuple[tuple[int, ...], np.dtype, SliceReader]:
        """nibabel indexes [x, y, z]: slice z is dataobj[..., z] transposed (scaling applied as in read_volume)."""
        import nibabel as nib

        try:
            proxy = nib.load(str(self.path)).dataobj
            dtype = np.asanyarray(proxy[(0,) * len(proxy.shape)]).dtype  # the dtype after scl_slope/inter
        except Exception as exc:
            raise _unreadable(self.path, "NIfTI", exc) from exc
        if dtype.fields is not None:
            raise _error(self.path, f"NIfTI stores colour voxels ({dtype})", GREY_FIX)
        shape = tuple(proxy.shape)[::-1]
        if len(shape) == 2:
            return shape, dtype, lambda z: np.asanyarray(proxy).T
        return shape, dtype, lambda z: np.ascontiguousarray(np.asanyarray(proxy[..., z]).T)

    def _open_hdf5(self, key: str | None) -> tuple[tuple[int, ...], np.dtype, SliceReader]:
        """Dataset `key` (or the only one); h5py reads the chunks of one slice at a time."""
        import h5py

        try:
            handle = h5py.File(self.path, "r")
        except Exception as exc:
            raise _unreadable(self.path, "HDF5", exc) from exc
        self._close = handle.close
        dataset = _hdf5_dataset(self.path, handle, key)
        if dataset.ndim == 2:
            return dataset.shape, dataset.dtype, lambda z: dataset[()]
        return dataset.shape, dataset.dtype, lambda z: dataset[z]

    def _open_folder(self, key: str | None) -> tuple[tuple[int, ...], np.dtype, SliceReader]:
        """One file per slice, in numeric file-name order, each checked against the first."""
        files = _slice_files(self.path)
        first = _read_slice(files[0])
        read = lambda z: first if z == 0 else _check_like_first(_read_slice(files[z]), files[z], first, files[0])  # noqa: E731
        return (len(files), *first.shape), first.dtype, read


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

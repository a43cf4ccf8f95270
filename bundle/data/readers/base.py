"""What every volume reader shares: the reader interface, the opened array it returns, and its error messages."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from bundle.errors import InputError
from bundle.errors import input_error as error

PathLike = str | os.PathLike
PixelSize = tuple[float, float]  # (y, x) nm per pixel
GREY_FIX = "convert it to one grey channel (8/16-bit greyscale), e.g. with Fiji (Image > Type > 8-bit) or tifffile"
_NM_PER_UNIT = {"nm": 1.0, "nanometer": 1.0, "um": 1e3, "µm": 1e3, "micron": 1e3, "micrometer": 1e3, "mm": 1e6,
                "millimeter": 1e6, "cm": 1e7, "centimeter": 1e7, "m": 1e9, "meter": 1e9, "a": 0.1, "angstrom": 0.1}  # fmt: skip


def nm_per_unit(unit: str) -> float:
    """Nanometres in one `unit` (a name or abbreviation, any case); NaN for an unknown unit."""
    return _NM_PER_UNIT.get(unit.lower(), math.nan)


def first_line(exc: BaseException) -> str:
    """Return an exception as 'Type: first line of message' (at most 200 characters)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]


def unreadable(path: PathLike, kind: str, exc: BaseException) -> InputError:
    """InputError for a file that its library could not parse."""
    return error(path, f"cannot be read as {kind} ({first_line(exc)})", "check the file is complete and not corrupt")


def listing(names: list[str]) -> str:
    """Up to 20 names for a message."""
    return ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")


def channel_name(n: int) -> str:
    """Name a channel count for messages."""
    return {2: "grey + alpha", 3: "RGB", 4: "RGBA"}.get(n, "multi-channel")


@dataclass
class OpenArray:
    """A volume file opened by its reader: its array as stored, read lazily, and how to close the file.

    Attributes:
        array: any object with `shape`, `dtype` and numpy indexing by a tuple of slices, one per stored axis
            (an h5py dataset, a zarr array, a memory map, or a small adapter): only what is indexed is read.
        what: what to call the data in messages, e.g. "TIFF" or "HDF5 dataset '/raw'".
        close: releases the file (does nothing for data already in memory).
    """

    array: Any
    what: str
    close: Callable[[], None] = lambda: None

    def __enter__(self) -> OpenArray:
        """Use as a context manager that closes the file."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the file."""
        self.close()


def read_block(path: PathLike, opened: OpenArray, index: tuple[slice, ...], what: str | None = None) -> np.ndarray:
    """`opened.array[index]` as a numpy array; a failure of the format's library is a one-line InputError naming
    `what` (default: `opened.what`)."""
    try:
        return np.asarray(opened.array[index])
    except InputError:
        raise
    except Exception as exc:  # the libraries raise many types for truncated or foreign files
        raise unreadable(path, what or opened.what, exc) from exc


class VolumeReader:
    """One volume format: which paths it claims, how it opens them and the voxel size they state.

    Subclasses set `kind` (the format's name in messages) and `suffixes` (the file-name endings they claim, lower
    case), and implement `open`; a format that states a pixel size overrides `pixel_size`, one that states the
    distance between slices `z_spacing`.
    """

    kind: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]]

    def claims(self, path: Path) -> bool:
        """True when `path` (an existing file or folder) is of this format; by default a file with one of `suffixes`."""
        return path.is_file() and path.name.lower().endswith(self.suffixes)

    def open(self, path: Path, key: str | None = None) -> OpenArray:
        """Open `path` (`key`: the array inside a container format, None = its only one) without reading its data."""
        raise NotImplementedError

    def read(self, path: Path, key: str | None = None) -> np.ndarray:
        """The whole array of `path` as stored (`key` as in `open`)."""
        with self.open(path, key) as opened:
            return read_block(path, opened, (slice(None),) * len(opened.array.shape))

    def pixel_size(self, path: Path, key: str | None = None) -> PixelSize | None:
        """The (y, x) pixel size in nm the file states, or None (the default: the format states none)."""
        return None

    def z_spacing(self, path: Path, key: str | None = None) -> float | None:
        """The nm between consecutive slices the file states, or None (the default: the format states none)."""
        return None

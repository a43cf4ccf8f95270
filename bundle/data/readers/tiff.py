"""Multi-page TIFF: one page per slice, read page by page; pixel size from OME-XML, ImageJ or the resolution tags."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import numpy as np

from bundle.data.readers.base import (
    GREY_FIX,
    OpenArray,
    PixelSize,
    VolumeReader,
    channel_name,
    error,
    nm_per_unit,
    unreadable,
)
from bundle.errors import InputError

TIFF_SUFFIXES = (".tif", ".tiff")


def tiff_series(path: Path, tif: Any) -> Any:
    """The one greyscale image series of an open TiffFile; several series or colour channels are an InputError."""
    series = tif.series
    if not series:
        raise error(path, "TIFF contains no image", "save the volume again as a multi-page greyscale TIFF")
    if len(series) > 1:
        shapes = ", ".join(str(tuple(s.shape)) for s in series[:4])
        raise error(
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
        raise error(path, f"image has {n} channels ({channel_name(n)})", fix)
    return series[0]


class TiffPages:
    """A TIFF image series indexed lazily: a (Z, Y, X) series reads only the pages of the slices asked for (all of
    them in one call), a 2D one its page; a series whose pages are not its slices (rare) is read whole once."""

    def __init__(self, tif: Any, series: Any) -> None:
        """Wrap `series` of the open TiffFile `tif`."""
        self.shape = tuple(series.shape)
        self.dtype = series.dtype
        self._tif = tif
        self._series = series
        self._paged = len(self.shape) == 3 and len(series.pages) == self.shape[0]
        self._whole = series.asarray if len(self.shape) == 2 else functools.cache(series.asarray)

    def __getitem__(self, index: tuple[slice, ...]) -> np.ndarray:
        """The block `index` (one slice per axis)."""
        if not self._paged:
            return self._whole()[index]
        pages = range(*index[0].indices(self.shape[0]))
        if len(pages) == self.shape[0] and pages.step == 1:
            data = self._series.asarray()
        else:
            data = self._tif.asarray(key=pages, series=0).reshape(len(pages), *self.shape[1:])
        return data[(slice(None), *index[1:])]


class TiffReader(VolumeReader):
    """Multi-page (or single-page) greyscale TIFF files, `.tif` and `.tiff`."""

    kind = "TIFF"
    suffixes = TIFF_SUFFIXES

    def open(self, path: Path, key: str | None = None) -> OpenArray:
        """Open the file's one greyscale series; several series, colour or a corrupt file are an InputError."""
        import tifffile

        try:
            tif = tifffile.TiffFile(path)
        except Exception as exc:  # tifffile raises many types for truncated or foreign files
            raise unreadable(path, self.kind, exc) from exc
        try:
            return OpenArray(TiffPages(tif, tiff_series(path, tif)), self.kind, tif.close)
        except InputError:
            tif.close()
            raise
        except Exception as exc:
            tif.close()
            raise unreadable(path, self.kind, exc) from exc

    def pixel_size(self, path: Path, key: str | None = None) -> PixelSize | None:
        """OME PhysicalSizeY/X, else the resolution tags with ImageJ's unit or ResolutionUnit."""
        import tifffile

        with tifffile.TiffFile(path) as tif:
            if tif.is_ome and tif.ome_metadata:
                y, x = (_ome_physical_size(tif.ome_metadata, axis) for axis in "YX")
                if y is not None and x is not None:
                    return y, x
            page = tif.pages[0]
            if "XResolution" not in page.tags or "YResolution" not in page.tags:
                return None
            unit_tag = int(page.tags["ResolutionUnit"].value) if "ResolutionUnit" in page.tags else 1
            per_unit = {2: 2.54e7, 3: 1e7}.get(unit_tag)  # inch, centimetre; 1 = no unit unless ImageJ names one
            if tif.is_imagej and "unit" in (tif.imagej_metadata or {}):
                per_unit = _imagej_nm_per_unit(tif.imagej_metadata)
            if per_unit is None:
                return None
            (yn, yd), (xn, xd) = page.tags["YResolution"].value, page.tags["XResolution"].value
            if not (yn and xn):
                return None
            return per_unit * yd / yn, per_unit * xd / xn

    def z_spacing(self, path: Path, key: str | None = None) -> float | None:
        """OME PhysicalSizeZ, else ImageJ's `spacing` in its `zunit` (written when it differs from `unit`) or `unit`."""
        import tifffile

        with tifffile.TiffFile(path) as tif:
            if tif.is_ome and tif.ome_metadata:
                z = _ome_physical_size(tif.ome_metadata, "Z")
                if z is not None:
                    return z
            metadata = (tif.imagej_metadata or {}) if tif.is_imagej else {}
            if "spacing" not in metadata or "unit" not in metadata:
                return None
            unit = "zunit" if "zunit" in metadata else "unit"
            return float(metadata["spacing"]) * _imagej_nm_per_unit(metadata, unit)


def _ome_physical_size(ome_xml: str, axis: str) -> float | None:
    """An OME-XML PhysicalSize`axis` (X, Y or Z) in nm, in its PhysicalSize`axis`Unit (OME's default: µm); None when
    the XML states none."""
    match = re.search(rf'PhysicalSize{axis}="([0-9.eE+-]+)"', ome_xml)
    if match is None:
        return None
    unit = re.search(rf'PhysicalSize{axis}Unit="([^"]+)"', ome_xml)
    return float(match.group(1)) * nm_per_unit(unit.group(1) if unit else "µm")


def _imagej_nm_per_unit(metadata: dict, key: str = "unit") -> float:
    """nm in the unit that ImageJ metadata names under `key` (ImageJ writes µ as the escape \\u00B5); NaN for an
    unknown unit."""
    return nm_per_unit(re.sub(r"\\u00b5", "µ", str(metadata[key]), flags=re.IGNORECASE))

"""Pixel size and z spacing: read them from a volume's metadata, and resample slices between the input's scale and
the model's.

The network sees mitochondria at the scale it was trained at (`MODEL_PIXEL_SIZE`, VNC III's 4.6 nm). A volume at
another pixel size is resampled to that scale before the network and its outputs back to the input's grid, so
that every output keeps the input's shape. The pixel size comes from `--pixel_size` (nm per pixel, y/x), or from
the file when it says (its reader in `bundle.data.readers`: OME-XML PhysicalSize, ImageJ or TIFF resolution
tags, NIfTI zooms, HDF5 `element_size_um`, OME-Zarr scales, the MRC header); an unknown pixel size is taken as
the model's. Scale factors within `TOLERANCE` of 1 are not resampled at all: EPFL's 5 nm against 4.6 nm is 1.09,
and predicting it unresampled keeps every earlier figure.

The z spacing (nm between slices) is not used for prediction: with the pixel size it gives the 3D instances their
volume in µm³ (`stated_z_spacing`), from `--z_spacing` or the file's metadata (OME-XML PhysicalSizeZ, ImageJ
`spacing`, the third NIfTI zoom, HDF5 `element_size_um`, the OME-Zarr z scale, the MRC header).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bundle.data.io import SliceVolume, parse_slices
from bundle.data.readers import PixelSize, reader_for
from bundle.data.readers.base import nm_per_unit
from bundle.errors import input_error

MODEL_PIXEL_SIZE = 4.6  # nm per pixel of the source volume, VNC III (its README)
TOLERANCE = 0.1  # scale factors closer than this to 1 are not resampled
logger = logging.getLogger("mitoda.pixel_size")


def _stated(path: str | os.PathLike, what: str) -> tuple[float, ...] | None:
    """The sizes in nm that a volume file states, from its reader's `what` ("pixel_size" or "z_spacing"), as a
    tuple; None when it states none, or only placeholders: non-finite or non-positive sizes, or 1 pixel per cm
    (what tools write when nothing is known)."""
    try:
        path = Path(os.fspath(path)).expanduser()
        size = getattr(reader_for(path), what)(path)
    except Exception:  # noqa: BLE001 - unreadable metadata states no size; reading the data reports a bad file
        return None
    sizes = None if size is None else tuple(float(v) for v in np.atleast_1d(size))
    if not sizes or not all(math.isfinite(v) and v > 0 for v in sizes) or all(abs(v - 1e7) < 1e-3 for v in sizes):
        return None
    return sizes


def file_pixel_size(path: str | os.PathLike) -> PixelSize | None:
    """The (y, x) pixel size in nm that a volume file states (its reader's `pixel_size`), or None when it states
    none (or a placeholder, such as 1 pixel per cm)."""
    sizes = _stated(path, "pixel_size")
    return None if sizes is None else (sizes[0], sizes[1])


def file_z_spacing(path: str | os.PathLike) -> float | None:
    """The nm between consecutive slices that a volume file states (its reader's `z_spacing`), or None when it
    states none (or a placeholder, as for `file_pixel_size`)."""
    sizes = _stated(path, "z_spacing")
    return None if sizes is None else sizes[0]


def as_pixel_size(value: float | Sequence[float] | str | None, where: str = "--pixel_size") -> PixelSize | None:
    """`--pixel_size` as (y, x) nm: one number for both, two for y/x ("8", 8, [8, 8] or "8,8"); None stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [v for v in re.split(r"[,\s/]+", value.strip()) if v]
    values = [value] if isinstance(value, (int, float)) else list(value)
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) not in (1, 2) or not all(math.isfinite(v) and v > 0 for v in numbers) or isinstance(value, bool):
        raise input_error(where, f"{value!r} is not a pixel size", "pass nm per pixel, one number (e.g. 8) or y,x (e.g. 8,6)")
    return (numbers[0], numbers[-1])


def stated_pixel_size(
    input_image: str | os.PathLike | None, pixel_size: float | Sequence[float] | str | None = None
) -> tuple[PixelSize | None, str]:
    """The (y, x) pixel size in nm of `input_image` and where it comes from: `pixel_size` if given
    ("--pixel_size"), else the file's metadata, else (None, "")."""
    given = as_pixel_size(pixel_size)
    if given is not None:
        return given, "--pixel_size"
    if input_image is None:
        return None, ""
    stated = file_pixel_size(input_image)
    return stated, f"{Path(input_image).name}'s metadata" if stated else ""


def stated_z_spacing(
    input_image: str | os.PathLike | None, z_spacing: float | None = None, slices: str | Sequence[int] | None = None
) -> tuple[float | None, str]:
    """The nm between consecutive predicted slices of `input_image` and where it comes from: `z_spacing` if given
    ("--z_spacing", as it is: `bundle.inference.instances3d.check_z_spacing` validates it), else the file's z
    spacing times the step between the `slices` predicted (`bundle.data.io.parse_slices`; '0-119:3': 3 times),
    else (None, ""). Slices that are not evenly spaced have no one spacing: None, and a log line says why."""
    if z_spacing is not None:
        return z_spacing, "--z_spacing"
    if input_image is None:
        return None, ""
    stated = file_z_spacing(input_image)
    if stated is None:
        return None, ""
    name, step = Path(input_image).name, 1
    if slices is not None:
        with SliceVolume(input_image) as volume:
            indices = parse_slices(slices, len(volume), path=str(input_image))
        steps = {abs(b - a) for a, b in zip(indices, indices[1:])}
        if len(steps) > 1:
            logger.info(f"z spacing unknown: --slices {slices} are not evenly spaced ({name} states {stated:g} nm "
                        "between its slices); pass --z_spacing NM for volume_um3")  # fmt: skip
            return None, ""
        step = steps.pop() if steps else 1
    source = f"{name}'s metadata" + (f", times the --slices step {step}" if step != 1 else "")
    logger.info(f"z spacing {stated * step:g} nm (from {source})")
    return stated * step, source


def model_scale(
    input_image: str | os.PathLike | None,
    pixel_size: float | Sequence[float] | str | None = None,
    model_pixel_size: float = MODEL_PIXEL_SIZE,
) -> tuple[float, float]:
    """(y, x) factors that take the input's pixels to the model's (2.0: the input is upsampled 2x).

    The pixel size is `pixel_size` if given, else the file's, else the model's; factors within TOLERANCE of 1 are
    1 (no resampling). The decision is logged.
    """
    size, source = stated_pixel_size(input_image, pixel_size)
    if size is None:
        logger.info(f"pixel size unknown: taken as the model's {model_pixel_size:g} nm (pass --pixel_size NM)")
        return 1.0, 1.0
    factors = tuple(1.0 if abs(s / model_pixel_size - 1) < TOLERANCE else s / model_pixel_size for s in size)
    action = "not resampled" if factors == (1.0, 1.0) else f"resampled by {factors[0]:.3g} x {factors[1]:.3g}"
    logger.info(f"pixel size {size[0]:g} x {size[1]:g} nm (from {source}); model {model_pixel_size:g} nm: {action}")
    return factors  # type: ignore[return-value]


def scaled_shape(shape: Sequence[int], factors: Sequence[float]) -> tuple[int, int]:
    """The (Y, X) shape of a slice of `shape` at the model's scale."""
    return tuple(max(1, round(n * f)) for n, f in zip(shape[-2:], factors))  # type: ignore[return-value]


def resample_slice(image: np.ndarray, shape: Sequence[int], labels: bool = False) -> np.ndarray:
    """A 2D slice resampled to `shape`: bilinear (anti-aliased when shrinking) for intensities and probabilities,
    nearest for labels. A slice already of that shape is returned as it is."""
    shape = tuple(int(n) for n in shape)
    if tuple(image.shape) == shape:
        return image
    if labels:
        rows = np.minimum((np.arange(shape[0]) + 0.5) * image.shape[0] / shape[0], image.shape[0] - 1).astype(int)
        cols = np.minimum((np.arange(shape[1]) + 0.5) * image.shape[1] / shape[1], image.shape[1] - 1).astype(int)
        return image[np.ix_(rows, cols)]
    shrink = shape[0] < image.shape[0] or shape[1] < image.shape[1]
    tensor = torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32)[None, None]
    out = F.interpolate(tensor, size=shape, mode="bilinear", antialias=shrink, align_corners=False)
    return out[0, 0].numpy()


def resample_volume(volume: np.ndarray, factors: Sequence[float], labels: bool = False) -> np.ndarray:
    """A (Z, Y, X) volume resampled slice by slice by `factors` (y, x), in its dtype (intensities rounded)."""
    shape = scaled_shape(volume.shape, factors)
    slices = [resample_slice(z, shape, labels) for z in volume]
    out = np.stack(slices)
    if not labels and volume.dtype.kind in "iu":
        info = np.iinfo(volume.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(volume.dtype, copy=False)


def scale_points(points: np.ndarray, factors: Sequence[float], shape: Sequence[int]) -> np.ndarray:
    """(N, 3) z,y,x pixel points moved to the grid of a volume resampled by `factors` (centre of the pixel kept),
    clipped into the resampled (Y, X) `shape`."""
    points = np.asarray(points, dtype=np.int64).copy()
    for axis, (factor, size) in enumerate(zip(factors, shape), start=1):
        points[:, axis] = np.clip(np.floor((points[:, axis] + 0.5) * factor), 0, size - 1)
    return points



# a viewer layer's units beyond the files' (`nm_per_unit`): "pixel" and no unit (the scale's numbers read as nm), and
# pint's Greek mu
VIEWER_UNITS = {"pixel": 1.0, "px": 1.0, "": 1.0, "μm": 1e3}


def _layer_nm_per_unit(name: str) -> float:
    """nm in one unit of a layer's scale; NaN for one that is not a length."""
    return VIEWER_UNITS[name] if name in VIEWER_UNITS else nm_per_unit(name)


def scale_pixel_size(scale: Sequence[float], units: Sequence[str | None] | None = None,
                     where: str = "layer scale") -> PixelSize | None:  # fmt: skip
    """The (y, x) pixel size in nm that a viewer layer's `scale` (per axis, the last two y, x) and `units` state,
    as `--pixel_size` takes it; None for the scale 1, 1 (a viewer's default: unknown, the file's or the model's is
    used). A unit that is not a length, or a scale that is not a size, is a one-line InputError."""
    yx = [float(v) for v in list(scale)[-2:]]
    names = [str(u if u is not None else "").strip() for u in (list(units)[-2:] if units is not None else ["", ""])]
    factors = [_layer_nm_per_unit(name) for name in names]
    unknown = [name for name, factor in zip(names, factors) if math.isnan(factor)]
    if unknown:
        raise input_error(where, f"unit {unknown[0]!r} is not a length", "use nm, µm, mm, angstrom, or pixel (none)")
    if len(yx) != 2 or yx == [1.0, 1.0] and all(factor == 1.0 for factor in factors):
        return None
    return as_pixel_size([v * factor for v, factor in zip(yx, factors)], where)

"""Point annotations (one click per mitochondrion): read, write, validate, simulate, and turn into densities.

Points are an (N, 3) int64 array of 0-based (z, y, x) pixel indices. Two CSV layouts are read:

* ours: header ``z,y,x`` (columns in any order), one point per row;
* a napari Points-layer export: header ``index,axis-0,axis-1,axis-2`` with float coordinates
  (axis-0 = z, axis-1 = y, axis-2 = x); the ``index`` column is optional and ignored.

Coordinates are rounded to the nearest integer with ``np.rint`` (halves go to the even neighbour).
"Data row" in messages counts the rows after the header from 1; report indices (``off_object_rows``) are 0-based
positions in the points array.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bundle.data.density import density_map, instance_centres
from bundle.data.io import parse_slices, read_volume
from bundle.errors import input_error as _error
from bundle.outputs import atomic_output

__all__ = [
    "density_from_points",
    "points_in_slices",
    "points_on_slice",
    "read_points",
    "simulate_points",
    "validate_points",
    "write_points",
]

PathLike = str | os.PathLike
OUR_COLUMNS = ("z", "y", "x")
NAPARI_AXES = ("axis-0", "axis-1", "axis-2")
NAPARI_COLUMNS = ("index", *NAPARI_AXES)
MAX_COORD = 2.0**53  # larger floats are not exact integers; no EM volume is that big
FORMAT_FIX = "save the points as CSV with the header 'z,y,x' (0-based pixel indices) or export the napari Points layer"


# ----------------------------------------------------------------------------------------------------------- errors
def _as_points(points: np.ndarray | Sequence, name: str = "points") -> np.ndarray:
    """Return points as an (N, 3) int64 array; raise ValueError for any other shape or non-integer values."""
    array = np.asarray(points)
    if array.size == 0:
        return np.zeros((0, 3), dtype=np.int64)
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(f"{name} must be an (N, 3) array of (z, y, x), got shape {array.shape}")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {array.dtype}")
    if array.dtype.kind == "f" and not (np.all(np.isfinite(array)) and np.array_equal(array, np.rint(array))):
        raise ValueError(f"{name} must hold integer pixel indices; round them first (np.rint)")
    return array.astype(np.int64)


# ----------------------------------------------------------------------------------------------------------- reading
def _header_layout(header: list[str], path: Path) -> tuple[list[int], str]:
    """Return the column positions of (z, y, x) and the layout name ('ours' or 'napari') for a header row."""
    names = [name.strip().lower() for name in header]
    found = ",".join(names) if any(names) else "(empty)"
    if sorted(names) == sorted(OUR_COLUMNS):
        return [names.index(c) for c in OUR_COLUMNS], "ours"
    axes = sorted((n for n in names if re.fullmatch(r"axis-\d+", n)), key=lambda n: int(n.split("-")[1]))
    others = [n for n in names if n not in axes and n != "index"]
    if axes and not others and len(set(names)) == len(names):
        if axes == ["axis-0", "axis-1"]:
            raise _error(
                path,
                "holds 2D points for a 3D volume (napari columns axis-0,axis-1, no axis-2)",
                "add the points in a 3D napari viewer of the whole (Z, Y, X) volume and export that Points layer",
            )
        if axes == list(NAPARI_AXES):
            return [names.index(c) for c in NAPARI_AXES], "napari"
    raise _error(
        path,
        f"has unknown columns '{found}', expected 'z,y,x' or napari's '{','.join(NAPARI_COLUMNS)}'",
        FORMAT_FIX,
    )


def read_points(path: PathLike) -> np.ndarray:
    """Read a points CSV (ours: z,y,x; or a napari Points export) as (N, 3) int64 (z, y, x), rounded with np.rint."""
    path = Path(os.fspath(path)).expanduser()
    if not path.exists():
        raise _error(path, "does not exist", "check the path (relative paths start from the current directory)")
    if path.is_dir():
        raise _error(path, "is a folder, not a points CSV file", "pass the .csv file that holds the points")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _error(path, f"is not a text CSV file (byte {exc.start} is not UTF-8)", FORMAT_FIX) from exc
    except OSError as exc:
        raise _error(path, f"cannot be read ({type(exc).__name__}: {exc.strerror or exc})", "check the file") from exc
    lines = [(number, row) for number, row in enumerate(csv.reader(io.StringIO(text)), start=1) if any(row)]
    if not lines:
        raise _error(path, "is empty: no points", "write a header 'z,y,x' and one point per row")
    positions, layout = _header_layout(lines[0][1], path)
    rows = lines[1:]
    if not rows:
        raise _error(path, "has a header but no points", "add one point per row below the header")
    width = len(lines[0][1])
    names = [lines[0][1][i].strip() for i in positions]
    coords = np.empty((len(rows), 3), dtype=np.float64)
    for data_row, (line, row) in enumerate(rows, start=1):
        where = f"data row {data_row} (line {line})"
        if len(row) != width:
            raise _error(path, f"{where} has {len(row)} values but the header has {width} columns", "fix that row")
        for axis, position in enumerate(positions):
            value = row[position].strip()
            try:
                number = float(value)
            except ValueError:
                raise _error(
                    path, f"{where} has a non-numeric value '{value}' in column '{names[axis]}'", "use numbers only"
                ) from None
            if not np.isfinite(number):
                raise _error(path, f"{where} has a {value} value in column '{names[axis]}'", "fill in or drop that row")
            if abs(number) > MAX_COORD:
                raise _error(path, f"{where} has value {value} in column '{names[axis]}'", "use pixel indices")
            coords[data_row - 1, axis] = number
    return np.rint(coords).astype(np.int64)


# ----------------------------------------------------------------------------------------------------------- writing
def write_points(path: PathLike, points: np.ndarray, napari: bool = False) -> None:
    """Write (N, 3) points as our 'z,y,x' CSV or a napari Points CSV, atomically (temp file + os.replace)."""
    points = _as_points(points)
    if len(points) == 0:
        raise ValueError("no points to write (read_points rejects a CSV without points)")
    with atomic_output(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        if napari:
            writer.writerow(NAPARI_COLUMNS)
            writer.writerows([i, *(repr(float(v)) for v in row)] for i, row in enumerate(points.tolist()))
        else:
            writer.writerow(OUR_COLUMNS)
            writer.writerows(points.tolist())


# ----------------------------------------------------------------------------------------------------------- checks
def validate_points(
    points: np.ndarray, shape: Sequence[int], path: PathLike = "", instances: np.ndarray | None = None
) -> dict:
    """Raise InputError for points outside `shape`; count (but keep) points on background of `instances`."""
    points = _as_points(points)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"shape must be (Z, Y, X), got {shape}")
    outside = np.any((points < 0) | (points >= np.asarray(shape)), axis=1)
    if outside.any():
        row = int(np.argmax(outside))
        z, y, x = points[row].tolist()
        axis = int(np.argmax((points[row] < 0) | (points[row] >= np.asarray(shape))))
        name, value, size = "zyx"[axis], int(points[row, axis]), shape[axis]
        raise _error(
            path,
            f"point at data row {row + 1} (z={z}, y={y}, x={x}) lies outside the volume of shape (Z, Y, X) = {shape}: "
            f"{name}={value} is not in 0-{size - 1} ({int(outside.sum())} of {len(points)} points outside)",
            "these points probably belong to another volume or crop; pass the matching volume "
            "(points are 0-based z, y, x pixel indices)",
        )
    report = {"num_points": int(len(points)), "off_object": 0, "off_object_rows": []}
    if instances is not None:
        instances = np.asarray(instances)
        if tuple(instances.shape) != shape:
            raise _error(
                path,
                f"instance volume has shape {tuple(instances.shape)} but the points are checked against {shape}",
                "pass the instance labels of the same volume",
            )
        off = instances[points[:, 0], points[:, 1], points[:, 2]] == 0
        report["off_object"] = int(off.sum())
        report["off_object_rows"] = np.flatnonzero(off).tolist()
    return report


# ----------------------------------------------------------------------------------------------------------- slices
def points_in_slices(points: np.ndarray, slices: Sequence[int]) -> np.ndarray:
    """The points on `slices`, in their original order, with z replaced by the slice's position in `slices`."""
    points = _as_points(points)
    slices = [int(s) for s in slices]
    if any(s < 0 for s in slices):
        raise ValueError(f"slice indices must be >= 0, got {slices}")
    if len(set(slices)) != len(slices):
        raise ValueError("each slice may be listed only once")
    if not slices or len(points) == 0:
        return np.zeros((0, 3), dtype=np.int64)
    lookup = np.full(max(max(slices), int(points[:, 0].max(initial=0))) + 1, -1, dtype=np.int64)
    lookup[slices] = np.arange(len(slices))
    z = points[:, 0]
    new_z = np.where(z >= 0, lookup[np.clip(z, 0, None)], -1)
    keep = new_z >= 0
    out = points[keep].copy()
    out[:, 0] = new_z[keep]
    return out


def points_on_slice(points: np.ndarray, z: int) -> np.ndarray:
    """(M, 2) int64 (y, x) of the points on slice `z`."""
    points = _as_points(points)
    return points[points[:, 0] == int(z), 1:].copy()


# ----------------------------------------------------------------------------------------------------------- simulation
def _displace(
    centre: np.ndarray, inside: np.ndarray, distance: float, rng: np.random.Generator
) -> tuple[int, int]:
    """Move `centre` by `distance` in a random direction, shortened until the pixel stays in `inside` (else centre)."""
    angle = rng.uniform(0.0, 2.0 * np.pi)
    direction = np.array([np.sin(angle), np.cos(angle)])
    lengths = np.arange(distance, 0.0, -0.25)  # walk back along the ray from the full length
    candidates = np.rint(centre[None, :] + lengths[:, None] * direction[None, :]).astype(np.int64)
    height, width = inside.shape
    ok = (
        (candidates[:, 0] >= 0)
        & (candidates[:, 0] < height)
        & (candidates[:, 1] >= 0)
        & (candidates[:, 1] < width)
        & (np.hypot(*(candidates - centre[None, :]).T) <= distance)  # rounding must not push it past `distance`
    )
    ok[ok] = inside[candidates[ok, 0], candidates[ok, 1]]
    if not ok.any():
        return int(centre[0]), int(centre[1])
    y, x = candidates[int(np.argmax(ok))]
    return int(y), int(x)


def simulate_points(
    instances: np.ndarray, fraction: float, seed: int = 0, displacement: float = 0.0, min_per_slice: int = 0
) -> np.ndarray:
    """Click round(fraction x instances) random instances per slice at their distance-transform maxima.

    Ids are per slice (the same id in two slices are two instances). Per slice, k = np.round(fraction * n) of its n
    instances are drawn without replacement; np.round rounds halves to even, so 3 instances at 15 % give
    round(0.45) = 0 points, at 50 % round(1.5) = 2, and 5 instances at 50 % give round(2.5) = 2. `min_per_slice`
    raises k to at least min(min_per_slice, n). A single numpy Generator seeded with `seed` is used for the whole
    volume, slices in order, so the result depends only on (instances, fraction, seed, displacement, min_per_slice).
    With `displacement` d > 0 each point moves by d pixels in a uniformly random direction, shortened along that
    ray until the (rounded) pixel lies inside the same instance and within d of the centre; it stays at the centre
    when no such pixel exists (the paper's Fig. 5 experiment). Returns (N, 3) int64 (z, y, x) sorted by z, y, x.
    """
    fraction = float(fraction)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    displacement = float(displacement)
    if not (np.isfinite(displacement) and displacement >= 0.0):
        raise ValueError(f"displacement must be >= 0 pixels, got {displacement}")
    if int(min_per_slice) != min_per_slice or min_per_slice < 0:
        raise ValueError(f"min_per_slice must be an integer >= 0, got {min_per_slice}")
    instances = np.asarray(instances)
    if instances.ndim == 2:
        instances = instances[np.newaxis]
    if instances.ndim != 3 or instances.dtype.kind not in "biu":
        raise ValueError(f"instances must be an integer (Z, Y, X) volume, got {instances.dtype} {instances.shape}")
    rng = np.random.default_rng(seed)
    out: list[tuple[int, int, int]] = []
    for z, labels in enumerate(instances):
        ids = np.unique(labels)
        ids = ids[ids > 0]
        count = max(int(np.round(fraction * len(ids))), min(int(min_per_slice), len(ids)))
        if count == 0:
            continue
        chosen = np.sort(rng.choice(ids, size=count, replace=False))
        # relabel the chosen instances 1..count so instance_centres returns their centres in `chosen` order
        position = np.clip(np.searchsorted(chosen, labels), 0, count - 1)
        selected = np.where((chosen[position] == labels) & (labels > 0), position + 1, 0)
        centres = instance_centres(selected)
        for index, centre in enumerate(centres):
            y, x = int(centre[0]), int(centre[1])
            if displacement > 0:
                y, x = _displace(centre, selected == index + 1, displacement, rng)
            out.append((z, y, x))
    points = np.asarray(out, dtype=np.int64).reshape(-1, 3)
    return points[np.lexsort((points[:, 2], points[:, 1], points[:, 0]))]


# ----------------------------------------------------------------------------------------------------------- density
def density_from_points(points: np.ndarray, shape: Sequence[int], sigma: float) -> np.ndarray:
    """(Z, Y, X) float32 centre density: one Gaussian per point, per slice; each slice sums to its point count."""
    shape = tuple(int(s) for s in shape)
    points = _as_points(points)
    validate_points(points, shape)
    out = np.zeros(shape, dtype=np.float32)
    for z in np.unique(points[:, 0]).tolist():
        out[z] = density_map(points_on_slice(points, z), shape[1:], sigma)
    return out


def load_target_points(path: PathLike | None, image: PathLike, slices: str | Sequence[int] | None = None) -> np.ndarray | None:
    """Points of `path` checked against `image`, kept on `slices` and re-indexed to them; None when no path (UDA)."""
    if path is None or str(path).lower() in ("", "none", "null"):
        return None
    shape = read_volume(image).shape
    points = read_points(path)
    validate_points(points, shape, path=str(path))
    return points_in_slices(points, parse_slices(slices, shape[0], path=str(image)))

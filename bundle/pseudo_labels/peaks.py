"""Detection pseudo-labels from a predicted centre-density map (paper III-B): count, peaks, new points, background.

All functions take one 2D density slice in instances per pixel (it sums to the slice's instance count) and
return (y, x) integer points as (K, 2) int64 arrays.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from scipy.spatial.distance import cdist
from skimage.feature import peak_local_max


def _check_slice(density: np.ndarray, name: str = "density") -> np.ndarray:
    """The array as a 2D float array, or a ValueError naming `name`."""
    density = np.asarray(density)
    if density.ndim != 2:
        raise ValueError(f"{name} must be a 2D slice, got shape {density.shape}")
    return density


def _as_points(points: np.ndarray | None) -> np.ndarray:
    """(K, 2) int64 (y, x) points; None means no point."""
    if points is None:
        return np.zeros((0, 2), dtype=np.int64)
    points = np.asarray(points)
    if points.size and (points.ndim != 2 or points.shape[1] != 2):
        raise ValueError(f"points must be a (K, 2) array of (y, x), got shape {points.shape}")
    return np.rint(points).astype(np.int64).reshape(-1, 2)


def _check_inside(points: np.ndarray, shape: tuple[int, ...]) -> None:
    """ValueError when any (y, x) point lies outside an image of `shape`."""
    outside = (points[:, 0] < 0) | (points[:, 0] >= shape[0]) | (points[:, 1] < 0) | (points[:, 1] >= shape[1])
    if outside.any():
        raise ValueError(f"points outside the {shape[0]}x{shape[1]} image: {points[outside].tolist()}")


def _check_fraction(fraction: float) -> float:
    """`fraction` as a float in [0, 1], or a ValueError."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    return float(fraction)


def _round_half_up(value: float) -> int:
    """Nearest integer, halves rounded up (Python's round() would send 2.5 to 2)."""
    return int(math.floor(value + 0.5))


def above_floor(density: np.ndarray) -> np.ndarray:
    """Density minus the slice's floor (its median: most pixels are background), as float64."""
    density = np.asarray(_check_slice(density), dtype=np.float64)
    return density - np.median(density)


def component_masses(density: np.ndarray, components: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Floor-removed density mass (in instances, as `estimate_count`) of each labelled component in `ids`."""
    return np.atleast_1d(ndimage.sum_labels(np.clip(above_floor(density), 0.0, None), components, index=ids))


def estimate_count(density: np.ndarray) -> float:
    """Instance count of a slice: the sum of its density above the slice's floor (its median, ~0 on clean maps).

    The softplus density head never reaches 0: on a 768x1024 EPFL slice its ~1e-4 floor alone sums to ~45
    instances, while the floor-removed mass is within 1-3 of the true count (docs/methods.md).
    """
    return float(np.clip(above_floor(density), 0.0, None).sum())


def find_peaks(
    density: np.ndarray, min_distance: int = 7, threshold_abs: float = 2e-4
) -> tuple[np.ndarray, np.ndarray]:
    """Local maxima by non-maximum suppression: (K, 2) int64 (y, x) sorted by decreasing density, and their values."""
    density = _check_slice(density)
    coords = peak_local_max(density, min_distance=min_distance, threshold_abs=threshold_abs, exclude_border=False)
    coords = coords.astype(np.int64).reshape(-1, 2)
    values = density[coords[:, 0], coords[:, 1]]
    order = np.argsort(-values, kind="stable")
    return coords[order], values[order]


def confident_peaks(
    density: np.ndarray, fraction: float, min_distance: int = 7, threshold_abs: float = 2e-4, count: float | None = None
) -> np.ndarray:
    """The round(fraction × N) highest peaks, N = `count` or the estimated count (IPL's Ω: 0.5 in round 2, 0.95 in 3)."""
    wanted = _round_half_up(_check_fraction(fraction) * (estimate_count(density) if count is None else count))
    coords, _ = find_peaks(density, min_distance=min_distance, threshold_abs=threshold_abs)
    return coords[:wanted]


def select_new_peaks(
    density: np.ndarray,
    known_points: np.ndarray | None,
    fraction: float,
    min_distance: int = 7,
    exclude_radius: float = 7.0,
    threshold_abs: float = 2e-4,
    cumulative: bool = False,
    count: float | None = None,
) -> np.ndarray:
    """One round of detection pseudo-points: the highest peaks farther than `exclude_radius` from every known point.

    The number taken is round(fraction × N), N = `count` or the estimated count (β = 0.2 per round). With `cumulative=True`
    `fraction` is instead the share of N that known + new points should reach (WDA-Net's rule), so
    max(0, round(fraction × N) − len(known_points)) are taken. Fewer are returned when fewer peaks qualify.
    """
    count = estimate_count(density) if count is None else count
    known = _as_points(known_points)
    wanted = _round_half_up(_check_fraction(fraction) * count)
    if cumulative:
        wanted = max(0, wanted - len(known))
    coords, _ = find_peaks(density, min_distance=min_distance, threshold_abs=threshold_abs)
    if len(known) and len(coords):
        coords = coords[cdist(coords, known).min(axis=1) > exclude_radius]
    return coords[:wanted]


def density_background_mask(
    density: np.ndarray,
    sigma: float = 11.0,
    radius_sigmas: float = 3.0,
    low: float = 1e-5,
    min_distance: int = 7,
    threshold_abs: float = 2e-4,
    points: np.ndarray | None = None,
) -> np.ndarray:
    """Confident background of a density map: farther than radius_sigmas·σ from every peak (and point), and density
    less than `low` above the slice's floor (the softplus head never reaches 0, see `estimate_count`).

    With σ = 11 one isolated instance's Gaussian falls to 1e-5 at about 3.1σ, so both conditions agree for
    clean maps; the distance condition guards weak instances whose peak is just above `threshold_abs`, the
    density condition guards instances the peak detector missed. `points` (known ground-truth and pseudo
    points) count as peaks too. Returns a bool mask the detection loss may use as "target density is 0".
    """
    density = _check_slice(density)
    coords, _ = find_peaks(density, min_distance=min_distance, threshold_abs=threshold_abs)
    known = _as_points(points)
    _check_inside(known, density.shape)
    centres = np.concatenate([coords, known], axis=0)
    if len(centres):
        seeds = np.ones(density.shape, dtype=bool)
        seeds[centres[:, 0], centres[:, 1]] = False
        far = ndimage.distance_transform_edt(seeds) > radius_sigmas * sigma
    else:
        far = np.ones(density.shape, dtype=bool)
    return far & (above_floor(density) < low)


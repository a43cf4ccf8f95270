"""Centre points of instances and Gaussian centre-density maps (mass = number of points)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def instance_centres(instances: np.ndarray) -> np.ndarray:
    """(N, 2) integer (y, x) centres of a 2D instance map: the maximum of each instance's distance transform."""
    if instances.ndim != 2:
        raise ValueError(f"instance_centres expects a 2D map, got shape {instances.shape}")
    centres = []
    for label_id, box in enumerate(ndimage.find_objects(instances), start=1):
        if box is None:
            continue
        y0, x0 = box[0].start, box[1].start
        inside = np.pad(instances[box] == label_id, 1)  # pad so the image border counts as outside
        distance = ndimage.distance_transform_edt(inside)
        y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
        centres.append((y0 + y - 1, x0 + x - 1))
    return np.asarray(centres, dtype=np.int64).reshape(-1, 2)


def density_map(points: np.ndarray, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian density of bandwidth `sigma` around (y, x) points; it sums to the number of points."""
    impulses = np.zeros(shape, dtype=np.float64)
    points = np.asarray(points, dtype=np.int64).reshape(-1, 2)
    np.add.at(impulses, (points[:, 0], points[:, 1]), 1.0)
    if sigma <= 0:
        return impulses.astype(np.float32)
    # "reflect" folds the tails back at the image border, so no mass is lost there.
    return ndimage.gaussian_filter(impulses, sigma=sigma, mode="reflect", truncate=4.0).astype(np.float32)


def centre_density(instances: np.ndarray, sigma: float) -> np.ndarray:
    """Density map of the centres of every instance of a 2D instance map."""
    return density_map(instance_centres(instances), instances.shape, sigma)

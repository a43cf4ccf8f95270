"""Link the 2D predictions of a volume across z into 3D instances, with a per-instance table (CSV).

Memory: the linking needs the whole (Z, Y, X) probability (float32), density (float32, watershed only) and the
label volume (int32/int64) at once, about 9-13 bytes per voxel plus scikit-image's temporaries; the 2D pass
before it does not (it holds one slice at a time).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
from skimage.measure import regionprops_table

from bundle.errors import InputError
from bundle.inference.postprocess import label_instances
from bundle.inference.prediction_folder import (
    LINKED,
    LINKED_TABLE,
    read_prediction,
    require_predictions,
    write_prediction,
)
from bundle.outputs import atomic_output

TABLE_COLUMNS = ("id", "volume", "z0", "y0", "x0", "z1", "y1", "x1", "centroid_z", "centroid_y", "centroid_x")


def instances_3d(
    probability: np.ndarray,
    density: np.ndarray | None = None,
    method: str = "components",
    threshold: float = 0.5,
    min_size: int = 16,
    peak_min_distance: int = 7,
    peak_threshold: float = 2e-4,
) -> np.ndarray:
    """3D instance ids (int32) of a (Z, Y, X) prediction: 6-connected components, or watershed seeded at 3D density peaks."""
    probability = np.asarray(probability)
    if probability.ndim != 3:
        raise InputError(f"probability: volume has shape {probability.shape}, not (Z, Y, X); pass a 3D probability volume")
    if density is not None and np.shape(density) != probability.shape:
        raise InputError(
            f"density: shape {np.shape(density)} differs from probability shape {probability.shape}; "
            "pass the density predicted with this probability"
        )
    if method not in ("components", "watershed"):
        raise InputError(f"method: unknown 3D instance method {method!r}; use 'components' or 'watershed'")
    if method == "watershed" and density is None:
        raise InputError("density: the watershed method needs the density volume; pass density.tif or use 'components'")
    return label_instances(probability, density, threshold, method, min_size, peak_min_distance, peak_threshold)


def instance_table(instances: np.ndarray) -> dict[str, np.ndarray]:
    """Per-instance id, volume (voxels), bbox (z0, y0, x0 inclusive; z1, y1, x1 exclusive) and centroid of a 3D label volume."""
    if np.ndim(instances) != 3:
        raise InputError(f"instances: volume has shape {np.shape(instances)}, not (Z, Y, X); pass a 3D label volume")
    props = regionprops_table(np.asarray(instances), properties=("label", "area", "bbox", "centroid"))
    names = ("label", "area", *(f"bbox-{i}" for i in range(6)), *(f"centroid-{i}" for i in range(3)))
    return {column: np.asarray(props[name]) for column, name in zip(TABLE_COLUMNS, names)}


def write_instance_table(path: str | os.PathLike, table: dict[str, np.ndarray]) -> Path:
    """Write an `instance_table` as CSV (integers as is, centroids with 3 decimals), atomically."""
    path = Path(path)
    columns = [table[name] for name in TABLE_COLUMNS]
    with atomic_output(path) as partial, open(partial, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(TABLE_COLUMNS)
        for row in zip(*columns):
            writer.writerow([int(v) for v in row[:8]] + [f"{float(v):.3f}" for v in row[8:]])
    return path


def write_instances_3d(
    prediction_dir: str | os.PathLike,
    method: str = "components",
    threshold: float = 0.5,
    min_size: int = 16,
    peak_min_distance: int = 7,
    peak_threshold: float = 2e-4,
) -> dict[str, Path]:
    """Read the probability (and density) of a prediction folder, write instances_3d (.tif, or an OME-Zarr image in
    an OME-Zarr folder) and instances_3d.csv there."""
    prediction_dir = Path(prediction_dir)
    if prediction_dir.exists() and not prediction_dir.is_dir():
        raise InputError(f"{prediction_dir}: prediction_dir is a file; pass the prediction folder (the --output_dir of configs/inference.yaml)")
    if not prediction_dir.is_dir():
        raise InputError(f"{prediction_dir}: prediction folder not found; pass the --output_dir of configs/inference.yaml")
    require_predictions(prediction_dir, ("probability", "density") if method == "watershed" else ("probability",))
    probability = read_prediction(prediction_dir, "probability")
    density = read_prediction(prediction_dir, "density") if method == "watershed" else None
    instances = instances_3d(probability, density, method, threshold, min_size, peak_min_distance, peak_threshold)
    del probability, density
    table = instance_table(instances)
    volume = write_prediction(prediction_dir, LINKED, instances)
    return {volume.name: volume, LINKED_TABLE: write_instance_table(prediction_dir / LINKED_TABLE, table)}

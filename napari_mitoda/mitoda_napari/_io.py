"""napari reader and writer contributions: mitoda's volumes, prediction folders and points CSV files.

Reader: a points CSV (ours, z,y,x, or a napari Points export: `bundle.data.points.read_points`) opens as a Points
layer; a prediction folder (DIR with probability.tif, ..., or OUT.ome.zarr: `bundle.inference.prediction_folder`)
as its probability and density images and its instance labels; a TIFF volume as an image, or as labels when its
name says instances or labels (instances.tif, a round's labels.tif). Volumes get the pixel size and z spacing
their files state as the layer scale, in nm, which the widget passes on as --pixel_size.
Writer: a Points layer as our z,y,x CSV (`bundle.data.points.write_points`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mitoda_napari import _repo  # noqa: F401 - makes the repository's `bundle` importable

LayerData = tuple[Any, dict, str]
LABEL_NAMES = ("instances", "labels", "label", "pseudo_labels")  # a TIFF whose name starts so opens as labels


def volume_scale(path: str | os.PathLike) -> dict:
    """The layer keywords `scale` and `units` (nm) from the pixel size and z spacing a file states; {} when it
    states no pixel size (napari's scale 1: unknown)."""
    from bundle.data.pixel_size import file_pixel_size, file_z_spacing

    size = file_pixel_size(path)
    if size is None:
        return {}
    return {"scale": (file_z_spacing(path) or size[0], *size), "units": ("nm", "nm", "nm")}


def _kind(name: str) -> str:
    """'labels' for a volume named as labels, else 'image'."""
    return "labels" if name.lower().startswith(LABEL_NAMES) else "image"


def _layer(data: np.ndarray, name: str, kind: str, scale: dict) -> LayerData:
    """One layer tuple; probabilities and densities look like maps, an EM volume (any other image) grey."""
    meta: dict = {"name": name, **scale}
    if kind == "image" and name.startswith(("probability", "density")):
        meta.update(colormap="magma" if name.startswith("probability") else "viridis", blending="additive")
    return (data if kind == "image" else np.asarray(data).astype(np.int32, copy=False), meta, kind)


def read_points_layer(path: str | os.PathLike) -> list[LayerData]:
    """A points CSV as one Points layer (z, y, x pixel indices)."""
    from bundle.data.points import read_points

    points = read_points(path).astype(np.float64)
    return [(points, {"name": Path(path).stem, "size": 12, "face_color": "red"}, "points")]


def read_prediction_layers(path: str | os.PathLike) -> list[LayerData]:
    """The volumes of a prediction folder (TIFF or OME-Zarr layout) as layers, at the pixel size it states."""
    from bundle.inference.prediction_folder import DTYPES, prediction_path, read_prediction

    layers = []
    for name in DTYPES:  # probability, density, instances, instances_3d
        if prediction_path(path, name).exists():
            scale = volume_scale(prediction_path(path, name))
            layers.append(_layer(read_prediction(path, name), name, _kind(name), scale))
    return layers


def read_volume_layer(path: str | os.PathLike) -> list[LayerData]:
    """A TIFF volume as one image layer, or labels layer when its name says so."""
    from bundle.data.io import read_volume

    name = Path(path).name.split(".")[0]
    return [_layer(read_volume(path), name, _kind(name), volume_scale(path))]


def is_prediction_folder(path: Path) -> bool:
    """Whether `path` is a folder that configs/inference.yaml wrote (its probability or instances exist)."""
    from bundle.inference.prediction_folder import prediction_path

    return path.is_dir() and any(prediction_path(path, name).exists() for name in ("probability", "instances"))


def get_reader(path: str | list[str]) -> Callable[[str], list[LayerData]] | None:
    """The reader of `path` (npe2 reader contribution), or None for a path this plugin does not open."""
    if isinstance(path, list):
        return None if len(path) != 1 else get_reader(path[0])
    path = Path(path)
    if path.suffix.lower() == ".csv" and path.is_file():
        return read_points_layer
    if is_prediction_folder(path):
        return read_prediction_layers
    if path.suffix.lower() in (".tif", ".tiff") and path.is_file():
        return read_volume_layer
    return None


def write_points_layer(path: str, data: Any, attributes: dict) -> list[str]:
    """Write a Points layer's (N, 3) data as our z,y,x CSV of pixel indices (npe2 writer contribution)."""
    from bundle.data.points import write_points

    write_points(path, np.rint(np.asarray(data, dtype=np.float64)))
    return [path]

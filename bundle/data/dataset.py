"""Build per-slice training and validation items from EM volumes (images normalised per slice)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from monai.transforms import NormalizeIntensity

from bundle.data.density import centre_density
from bundle.data.io import check_same_shape, read_label_instances, read_volume, select_slices
from bundle.errors import InputError

PathLike = str | os.PathLike


def normalize_slice(image: np.ndarray, path: PathLike = "", z: int = 0) -> np.ndarray:
    """Z-score of one (Y, X) slice as float32; a NaN/inf or constant slice is an InputError naming file and slice."""
    image = np.asarray(image, dtype=np.float32)
    low, high = (float(image.min()), float(image.max())) if image.size else (0.0, 1.0)
    if not (math.isfinite(low) and math.isfinite(high)):  # min/max propagate NaN: no full-size isfinite mask
        raise InputError(f"{path}: image slice {z} contains NaN or infinite values; replace them before running")
    if low == high:
        raise InputError(
            f"{path}: image slice {z} is constant ({low:g}); pass the EM image volume, not a blank one, "
            "or leave the slice out with --slices"
        )
    return np.asarray(NormalizeIntensity(dtype=np.float32)(image))


def normalize_slices(volume: np.ndarray, path: PathLike = "") -> np.ndarray:
    """Per-slice z-score (`normalize_slice`) of a (Z, Y, X) volume as float32."""
    volume = np.asarray(volume)
    out = np.empty(volume.shape, dtype=np.float32)
    for z, image in enumerate(volume):
        out[z] = normalize_slice(image, path, z)
    return out


def load_slices(
    image: PathLike,
    label: PathLike | None = None,
    slices: str | Sequence[int] | None = None,
    sigma: float = 11.0,
    mask_threshold: int = 127,
    with_density: bool = True,
    binary_label: bool = False,
    key: str | None = None,
) -> list[dict]:
    """One dict per slice: "image" (1, Y, X) float32, "label" (1, Y, X) instance ids (0/1 if `binary_label`), "density"."""
    raw = read_volume(image, key=key)
    instances = None
    if label is not None:
        instances = read_label_instances(label, key=key, threshold=mask_threshold)
        check_same_shape(raw, instances, str(image), str(label))
        instances = select_slices(instances, slices, path=str(label))
    volume = normalize_slices(select_slices(raw, slices, path=str(image)), image)
    items = []
    for z, image_slice in enumerate(volume):
        item = {"image": image_slice[None]}
        if instances is not None:
            item["label"] = (instances[z] > 0).astype(np.uint8)[None] if binary_label else instances[z][None]
            if with_density:
                item["density"] = centre_density(instances[z], sigma)[None]
        items.append(item)
    return items


def prepare_multitask_batch(
    batchdata: Mapping[str, torch.Tensor], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`prepare_batch` for SupervisedTrainer: (image, {"label", "density"[, "density_mask"]}) on `device`."""
    targets = {k: batchdata[k].to(device=device, non_blocking=non_blocking) for k in ("label", "density", "density_mask") if k in batchdata}
    return batchdata["image"].to(device=device, non_blocking=non_blocking), targets


def check_data_root(dataset_dir: PathLike) -> None:
    """InputError when the data root does not exist (configs read everything below it)."""
    if not Path(dataset_dir).is_dir():
        raise InputError(f"{dataset_dir}: data root does not exist; pass --dataset_dir to the folder holding vnc3/ and epfl_hippocampus/")


def target_items(image: PathLike, slices: str | Sequence[int] | None = None, key: str | None = None) -> list[dict]:
    """Unlabelled target slices with empty supervision (label all ignored, zero density and masks) until round 1."""
    items = load_slices(image, None, slices, key=key)
    for item in items:
        shape = item["image"].shape
        item["label"] = np.full(shape, 255, dtype=np.uint8)
        item["density"] = np.zeros(shape, dtype=np.float32)
        item["density_mask"] = np.zeros(shape, dtype=np.uint8)
        item["point_mask"] = np.zeros(shape, dtype=np.uint8)
    return items

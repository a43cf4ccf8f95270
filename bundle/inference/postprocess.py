"""Pure post-processing: network output → foreground probability, density and 2D instances."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.segmentation import watershed

from bundle.networks.multitask_unet import DENSITY_CHANNEL, SEG_CHANNELS


def split_output(output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(foreground probability, density), each (B, 1, H, W), from the network's one-tensor output."""
    probability = torch.softmax(output[:, list(SEG_CHANNELS)].float(), dim=1)[:, 1:2]
    return probability, output[:, DENSITY_CHANNEL : DENSITY_CHANNEL + 1].float()


def instances_from_prediction(
    probability: np.ndarray,
    density: np.ndarray | None = None,
    threshold: float = 0.5,
    method: str = "components",
    min_size: int = 16,
    peak_min_distance: int = 7,
    peak_threshold: float = 2e-4,
) -> np.ndarray:
    """2D instance ids (int32) from a probability map: threshold + connected components, or density-seeded watershed."""
    if probability.ndim != 2:
        raise ValueError(f"instances_from_prediction expects a 2D slice, got shape {probability.shape}")
    return label_instances(probability, density, threshold, method, min_size, peak_min_distance, peak_threshold)


def label_instances(
    probability: np.ndarray,
    density: np.ndarray | None = None,
    threshold: float = 0.5,
    method: str = "components",
    min_size: int = 16,
    peak_min_distance: int = 7,
    peak_threshold: float = 2e-4,
) -> np.ndarray:
    """Instance ids (int32) of a 2D or 3D map: face-connected components of probability >= threshold (objects
    under `min_size` px dropped), or a watershed of -density seeded at its peaks inside that mask."""
    if method not in ("components", "watershed"):
        raise ValueError(f"unknown instance method {method!r}; use 'components' or 'watershed'")
    if method == "watershed" and density is None:
        raise ValueError("the watershed method needs the density map")
    # One labelling pass: small objects are dropped by size and the rest renumbered 1..n in the same
    # (raster) order, which equals remove_small_objects followed by a second labelling, at half the cost.
    # scipy's label: face-connected by default, the same ids as skimage's label(connectivity=1), in int32 (half of
    # skimage's int64: 67 MB less at the peak of a 4096² slice)
    components, count = ndimage.label(probability >= threshold, output=np.int32)
    components = kept_ids(np.bincount(components.ravel(), minlength=count + 1), min_size)[components]
    if method == "components":
        return components
    mask = components > 0
    peaks = peak_local_max(density, min_distance=peak_min_distance, threshold_abs=peak_threshold, labels=mask.astype(np.int32))
    markers = np.zeros(mask.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # Components without any peak keep one seed of their own so that no foreground is lost.
    unseeded = np.ones(int(components.max(initial=0)) + 1, dtype=bool)
    unseeded[np.unique(components[markers > 0])] = False
    unseeded[0] = False
    seeds = np.zeros(unseeded.size, dtype=np.int32)
    seeds[unseeded] = np.arange(len(peaks) + 1, len(peaks) + 1 + int(unseeded.sum()))
    markers = np.where(markers > 0, markers, seeds[components])
    return watershed(-density, markers, mask=mask).astype(np.int32)


def kept_ids(sizes: np.ndarray, min_size: int) -> np.ndarray:
    """New id (int32) of each label from its size (`sizes[label]`, label 0 the background): labels of at least
    `min_size` (and 1) voxels are numbered 1..n in label order, the others and the background become 0."""
    keep = np.asarray(sizes) >= max(min_size, 1)
    keep[0] = False
    return np.cumsum(keep, dtype=np.int32) * keep

"""Pure post-processing: network output → foreground probability, density and 2D instances."""

from __future__ import annotations

import numpy as np
import torch
from skimage.feature import peak_local_max
from skimage.measure import label as connected_components
from skimage.morphology import remove_small_objects
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
    mask = probability >= threshold
    if min_size > 0:
        mask = remove_small_objects(mask, max_size=min_size - 1) if mask.any() else mask
    if method == "components":
        return connected_components(mask, connectivity=1).astype(np.int32)
    if method != "watershed":
        raise ValueError(f"unknown instance method {method!r}; use 'components' or 'watershed'")
    if density is None:
        raise ValueError("the watershed method needs the density map")
    peaks = peak_local_max(density, min_distance=peak_min_distance, threshold_abs=peak_threshold, labels=mask.astype(np.int32))
    markers = np.zeros(mask.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # Components without any peak keep one seed of their own so that no foreground is lost.
    components = connected_components(mask, connectivity=1)
    unseeded = np.setdiff1d(np.unique(components[mask]), np.unique(components[markers > 0]))
    for offset, component in enumerate(unseeded, start=len(peaks) + 1):
        markers[components == component] = offset
    return watershed(-density, markers, mask=mask).astype(np.int32)

"""RGB overlays of EM slices: the image in grey with coloured masks blended on top (pure functions, no I/O)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Colour = tuple[int, int, int]
TP_COLOUR: Colour = (0, 255, 0)  # true positive: green
FP_COLOUR: Colour = (255, 0, 0)  # false positive: red
FN_COLOUR: Colour = (0, 0, 255)  # false negative: blue
ERROR_ALPHA = 0.5  # weight of the colour against the grey image


def grey_rgb(image: np.ndarray) -> np.ndarray:
    """(Y, X) image min-max stretched to 0-255 grey levels (truncated) as float32 (Y, X, 3); constant: black."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"grey_rgb expects a 2D (Y, X) image, got shape {image.shape}")
    grey = np.clip((image - image.min()) / max(float(np.ptp(image)), 1e-6) * 255, 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1).astype(np.float32)


def tint(rgb: np.ndarray, mask: np.ndarray, colour: Sequence[float], alpha: float) -> np.ndarray:
    """Copy of float (Y, X, 3) `rgb` with `(1 - alpha) * rgb + alpha * colour` where `mask` is true."""
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {rgb.shape[:2]}")
    out = np.array(rgb, dtype=np.float32, copy=True)
    out[mask] = (1.0 - alpha) * out[mask] + alpha * np.asarray(colour, dtype=np.float32)
    return out


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """Float RGB rounded and clipped to uint8."""
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def error_overlay(
    image: np.ndarray, prediction: np.ndarray, truth: np.ndarray, alpha: float = ERROR_ALPHA
) -> np.ndarray:
    """uint8 (Y, X, 3) of a slice: grey image, true positives green, false positives red, false negatives blue."""
    prediction, truth = np.asarray(prediction, dtype=bool), np.asarray(truth, dtype=bool)
    if not image.shape == prediction.shape == truth.shape:
        raise ValueError(f"image {image.shape}, prediction {prediction.shape} and truth {truth.shape} differ in shape")
    rgb = grey_rgb(image)
    errors = ((prediction & truth, TP_COLOUR), (prediction & ~truth, FP_COLOUR), (~prediction & truth, FN_COLOUR))
    for mask, colour in errors:
        rgb = tint(rgb, mask, colour, alpha)
    return to_uint8(rgb)

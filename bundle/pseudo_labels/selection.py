"""Segmentation pseudo-labels of one 2D slice: instance-aware (IPL), pixel threshold, and WDA-Net entropy.

Every function returns a uint8 label map: 0 = background, 1 = mitochondrion, 255 = ignored
(`bundle.losses.multitask.IGNORE_INDEX`). `probability` is the foreground probability of a slice in [0, 1].
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.measure import label as connected_components
from skimage.segmentation import watershed

from bundle.losses.multitask import IGNORE_INDEX
from bundle.pseudo_labels.peaks import _as_points, _check_inside, _check_slice, component_masses

BACKGROUND, FOREGROUND = 0, 1
PSEUDO_LABEL_KINDS = ("ipl", "threshold", "entropy")


def instance_aware_pseudo_label(
    probability: np.ndarray,
    points: np.ndarray | None,
    threshold: float = 0.7,
    background_threshold: float = 0.3,
    density: np.ndarray | None = None,
    min_density_mass: float = 0.3,
    gt_points: np.ndarray | None = None,
    unsupported_background_mass: float = 0.0,
) -> np.ndarray:
    """IPL (eq. 3): components of p ≥ threshold holding a point → 1, p ≤ background_threshold → 0, else 255.

    Components are 4-connected. A component holding no point (of `points` = Ω or `gt_points`) is ignored, not
    background: it may be an unlabelled mitochondrion. With `density`, a selected component whose density mass
    (sum of the density above the slice's floor over its pixels, in instances; see `estimate_count`) is below `min_density_mass` is a detection-head false
    positive and is ignored too, unless it holds a ground-truth point (`gt_points` are always trusted); and a
    component holding no point whose mass is below `unsupported_background_mass` (0 = never) becomes background:
    the detection head sees no instance there, so the segmentation's component is a false positive.
    """
    probability = _check_slice(probability, "probability")
    if not 0.0 <= background_threshold < threshold <= 1.0:
        raise ValueError(f"need 0 <= background_threshold < threshold <= 1, got {background_threshold}, {threshold}")
    omega, trusted = _as_points(points), _as_points(gt_points)
    _check_inside(omega, probability.shape)
    _check_inside(trusted, probability.shape)
    components = connected_components(probability >= threshold, connectivity=1)
    selected = _component_ids(components, np.concatenate([omega, trusted], axis=0))
    unsupported = np.zeros(0, dtype=selected.dtype)
    if density is not None and components.max() > 0:
        density = _check_slice(density)
        if density.shape != probability.shape:
            raise ValueError(f"density shape {density.shape} differs from probability shape {probability.shape}")
        ids = np.arange(1, components.max() + 1)
        mass = component_masses(density, components, ids)
        kept = (mass[selected - 1] >= min_density_mass) | np.isin(selected, _component_ids(components, trusted))
        unsupported = ids[(mass < unsupported_background_mass) & ~np.isin(ids, selected)]
        selected = selected[kept]
    label = np.full(probability.shape, IGNORE_INDEX, dtype=np.uint8)
    label[probability <= background_threshold] = BACKGROUND
    label[np.isin(components, unsupported)] = BACKGROUND
    label[np.isin(components, selected)] = FOREGROUND
    return label


def _component_ids(components: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Sorted ids (> 0) of the components under (y, x) points; points on background add nothing."""
    ids = components[points[:, 0], points[:, 1]]
    return np.unique(ids[ids > 0])


def threshold_pseudo_label(probability: np.ndarray, threshold: float = 0.9) -> np.ndarray:
    """Pixel-wise confidence: prob ≥ threshold → 1, prob ≤ 1 − threshold → 0, else 255."""
    probability = _check_slice(probability, "probability")
    if not 0.5 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0.5, 1], got {threshold}")
    label = np.full(probability.shape, IGNORE_INDEX, dtype=np.uint8)
    label[probability <= 1.0 - threshold] = BACKGROUND
    label[probability >= threshold] = FOREGROUND
    return label


def binary_entropy(probability: np.ndarray) -> np.ndarray:
    """Normalised binary entropy H(p) / ln 2 in [0, 1] (bits; WDA-Net divides by log(number of classes))."""
    p = np.clip(np.asarray(probability, dtype=np.float64), 0.0, 1.0)
    q = 1.0 - p
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0) + np.where(q > 0, q * np.log(q), 0.0)
    return -terms / np.log(2.0)


def entropy_pseudo_label(
    probability: np.ndarray, max_entropy: float = 0.5, percentile: float | None = 80.0
) -> np.ndarray:
    """WDA-Net [12] entropy rule: argmax label where normalised entropy ≤ its class's limit, else 255.

    The limit of a class is max(max_entropy, `percentile`-th percentile of the entropies of the pixels whose
    argmax is that class), so at least the `percentile` % most certain pixels of each class are kept and every
    pixel with entropy ≤ max_entropy (0.5 bit ⇔ p ≥ 0.89 or ≤ 0.11) is kept. `percentile=None` gives the plain
    fixed rule entropy ≤ max_entropy. Percentiles use numpy's linear interpolation.
    """
    probability = _check_slice(probability, "probability")
    if not 0.0 <= max_entropy <= 1.0:
        raise ValueError(f"max_entropy is a normalised entropy in [0, 1], got {max_entropy}")
    if percentile is not None and not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    argmax = (probability > 0.5).astype(np.uint8)  # softmax argmax: a tie goes to background
    entropy = binary_entropy(probability)
    label = np.full(probability.shape, IGNORE_INDEX, dtype=np.uint8)
    for cls in (BACKGROUND, FOREGROUND):
        in_class = argmax == cls
        limit = max_entropy
        if percentile is not None and in_class.any():
            limit = max(limit, float(np.percentile(entropy[in_class], percentile)))
        keep = in_class & (entropy <= limit)
        label[keep] = cls
    return label


def pseudo_label(
    kind: str,
    probability: np.ndarray,
    points: np.ndarray | None = None,
    density: np.ndarray | None = None,
    **kwargs,
) -> np.ndarray:
    """Dispatch to "ipl" | "threshold" | "entropy"; `points` and `density` are used by "ipl" only."""
    if kind == "ipl":
        if points is None:
            raise ValueError("pseudo-label kind 'ipl' needs the confident points Ω (an empty (0, 2) array for none)")
        return instance_aware_pseudo_label(probability, points, density=density, **kwargs)
    if kind == "threshold":
        return threshold_pseudo_label(probability, **kwargs)
    if kind == "entropy":
        return entropy_pseudo_label(probability, **kwargs)
    raise ValueError(f"unknown pseudo-label kind {kind!r}; use one of {', '.join(PSEUDO_LABEL_KINDS)}")


def add_point_labels(label: np.ndarray, points: np.ndarray | None, radius: float = 0) -> np.ndarray:
    """Copy of `label` set to 1 at each (y, x) point and within `radius` px (ground-truth points fused into ŷ^t)."""
    label = _check_slice(label, "label")
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    points = _as_points(points)
    _check_inside(points, label.shape)
    fused = label.copy()
    if not len(points):
        return fused
    seeds = np.ones(label.shape, dtype=bool)
    seeds[points[:, 0], points[:, 1]] = False
    fused[ndimage.distance_transform_edt(seeds) <= radius] = FOREGROUND
    return fused


def snap_to_membranes(
    label: np.ndarray, image: np.ndarray, erode: int = 3, ring: int = 10, sigma: float = 1.0, margin: int = 0
) -> np.ndarray:
    """Copy of `label` whose foreground (1) pixels beyond their mitochondrion's membrane become background (0).

    EM stains membranes dark: a marker watershed of the smoothed image (elevation = −intensity, so that basins meet
    on the darkest ridge) grows the foreground eroded by `erode` px against everything farther than `ring` px from
    it; foreground pixels the outside basin takes become background, except those within `margin` px of the inside
    basin (the outer part of the membrane, where labels may draw the outline). Only shrinks: no pixel becomes
    foreground. The flood runs only on the unmarked band and the markers that touch it (the others can reach no
    unmarked pixel): the same basins as a flood of the whole slice (tests/test_pseudo_labels.py), 10–20× faster.
    """
    label, image = _check_slice(label, "label"), _check_slice(image, "image")
    if label.shape != image.shape:
        raise ValueError(f"label {label.shape} and image {image.shape} differ in shape")
    foreground = label == FOREGROUND
    if not foreground.any():
        return label.copy()
    markers = np.zeros(label.shape, np.int32)
    markers[~ndimage.binary_dilation(foreground, iterations=ring)] = 1
    markers[ndimage.binary_erosion(foreground, iterations=erode)] = 2
    band = markers == 0
    near = ndimage.binary_dilation(band)  # the band and the markers 4-connected to it, as the flood's neighbours
    flooded = watershed(-ndimage.gaussian_filter(image.astype(np.float64), sigma), np.where(near, markers, 0), mask=near)
    inside = (markers == 2) | (band & (flooded == 2))
    if margin > 0:
        inside = ndimage.binary_dilation(inside, iterations=margin)
    snapped = label.copy()
    snapped[foreground & ~inside] = BACKGROUND
    return snapped


def instances_with_points(label: np.ndarray, points: np.ndarray | None) -> np.ndarray:
    """uint8 mask, 1 on the 4-connected foreground (label == 1) components holding a (y, x) point, else 0."""
    label = _check_slice(label, "label")
    points = _as_points(points)
    _check_inside(points, label.shape)
    components, _ = ndimage.label(label == FOREGROUND)  # default structure: 4-connectivity in 2D
    return np.isin(components, _component_ids(components, points)).astype(np.uint8)

"""Where to click next: rank a model's least certain instances so that a person's next point clicks add the most.

Per slice, from the foreground probability p and the centre density d (instances per pixel) of the model:

* candidates: the connected components of p >= `threshold` (objects under `min_size` px dropped, as the default
  instance post-processing), and the density peaks (`find_peaks`, NMS `peak_min_distance`) that lie on no
  component and farther than `attach_distance` px from every component (mitochondria the segmentation misses);
* margin M = mean |2p − 1| over the candidate's region (1 = certain, 0 = p ≈ 0.5 everywhere); the region of a
  peak candidate is the disc of radius σ/2 around the peak;
* detection mass m: for a component, the floor-removed density (`above_floor`, clipped at 0) summed over its
  catchment, the pixels nearer to it than to any other component and at most 2σ from it (a centre's Gaussian
  spreads about σ beyond the mask; the disc of radius 2σ holds 86 % of it); for a peak, (d_peak − floor)·2πσ²,
  the mass of a Gaussian of that height;
* disagreement D = |m − n| with n the instances the segmentation claims (1 for a component, 0 for a peak): 0 or
  ≥ 2 centres in one component, or a centre without a component;
* score U = (1 − M) + min(D, 1), in [0, 2]; higher = less sure, suggested first.

Candidates with m < `min_mass` (0.5: the detection head sees less than half an instance) are left out: they are
mostly background, where a click adds nothing (adapted EPFL model, slices 0-119: 90 % of the components on no true
instance have m < 0.51, and 66 of the 68 off-component peaks lay on background; with no floor the top 40 were
specks of < 100 px, 36 of them on background).
Components holding an already clicked point, and peaks within `exclude_radius` px of one, are left out. The place
to click is a component's distance-transform maximum (`instance_centres`, as simulated points) or the peak.
`rank_suggestions` takes the top k over all slices, spread: at most ceil(k / slices with candidates) per slice
first, then the best of the rest (or at most `per_slice` per slice, a hard cap).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from bundle.data.density import instance_centres
from bundle.inference.postprocess import label_instances
from bundle.pseudo_labels.peaks import _as_points, _check_inside, _check_slice, find_peaks


@dataclass(frozen=True)
class Suggestion:
    """One candidate instance: where to click (z, y, x), its score U and the parts of U."""

    z: int
    y: int
    x: int
    score: float
    margin: float
    mass: float
    kind: str
    area: int


def _check_maps(probability: np.ndarray, density: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both maps as 2D float arrays of one shape with finite values, p in [0, 1]; else a one-line ValueError."""
    probability = np.asarray(_check_slice(probability, "probability"), dtype=np.float64)
    density = np.asarray(_check_slice(density, "density"), dtype=np.float64)
    if probability.shape != density.shape:
        raise ValueError(f"probability {probability.shape} and density {density.shape} must have the same shape")
    if not (np.isfinite(probability).all() and np.isfinite(density).all()):
        raise ValueError("probability and density must be finite (no NaN or inf)")
    if probability.size and (probability.min() < 0.0 or probability.max() > 1.0):
        raise ValueError(f"probability must lie in [0, 1], got {probability.min():g} to {probability.max():g}")
    return probability, density


def slice_candidates(
    probability: np.ndarray,
    density: np.ndarray,
    clicked: np.ndarray | None = None,
    z: int = 0,
    threshold: float = 0.5,
    min_size: int = 16,
    sigma: float = 11.0,
    peak_min_distance: int = 22,
    peak_threshold: float = 2e-4,
    attach_distance: float = 5.0,
    exclude_radius: float = 22.0,
    min_mass: float = 0.5,
) -> list[Suggestion]:
    """Scored candidates (module docstring) of one slice, not yet clicked; `clicked` is (M, 2) (y, x), z is a label."""
    probability, density = _check_maps(probability, density)
    clicked = _as_points(clicked)
    _check_inside(clicked, probability.shape)
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0 px, got {sigma}")
    certainty = np.abs(2.0 * probability - 1.0)
    floor = float(np.median(density))
    excess = np.clip(density - floor, 0.0, None)
    components = label_instances(probability, threshold=threshold, min_size=min_size)
    count = int(components.max(initial=0))
    out: list[Suggestion] = []
    if count:
        gap, (iy, ix) = ndimage.distance_transform_edt(components == 0, return_indices=True)
        owner = np.where(gap <= 2.0 * sigma, components[iy, ix], 0)
        mass = np.bincount(owner.ravel(), weights=excess.ravel(), minlength=count + 1)
        area = np.bincount(components.ravel(), minlength=count + 1)
        margin = np.bincount(components.ravel(), weights=certainty.ravel(), minlength=count + 1) / np.maximum(area, 1)
        done = np.zeros(count + 1, dtype=bool)
        done[components[clicked[:, 0], clicked[:, 1]]] = True
        for label_id, (y, x) in enumerate(instance_centres(components).tolist(), start=1):
            m, sure = float(mass[label_id]), float(margin[label_id])
            if not done[label_id] and m >= min_mass:
                score = (1.0 - sure) + min(abs(m - 1.0), 1.0)
                out.append(Suggestion(z, y, x, score, sure, m, "component", int(area[label_id])))
    else:
        gap = np.full(probability.shape, np.inf)
    peaks, values = find_peaks(density, min_distance=peak_min_distance, threshold_abs=peak_threshold)
    reach = int(sigma // 2)
    for (y, x), value in zip(peaks.tolist(), values.tolist()):
        m = (value - floor) * 2.0 * math.pi * sigma**2
        if gap[y, x] <= attach_distance or m < min_mass:
            continue
        if len(clicked) and np.hypot(*(clicked - [y, x]).T).min() <= exclude_radius:
            continue
        y0, x0 = max(y - reach, 0), max(x - reach, 0)
        window = certainty[y0 : y + reach + 1, x0 : x + reach + 1]
        yy, xx = np.ogrid[y0 - y : y0 - y + window.shape[0], x0 - x : x0 - x + window.shape[1]]
        disc = yy**2 + xx**2 <= (sigma / 2.0) ** 2
        sure = float(window[disc].mean())
        out.append(Suggestion(z, y, x, (1.0 - sure) + min(m, 1.0), sure, m, "peak", int(disc.sum())))
    return out


def rank_suggestions(candidates: Sequence[Suggestion], k: int, per_slice: int | None = None) -> list[Suggestion]:
    """The k best candidates by score (ties by z, y, x), spread over slices: at most `per_slice` per slice (a hard
    cap), or by default at most ceil(k / slices with candidates) per slice first, then the best of the rest."""
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k}")
    if per_slice is not None and (int(per_slice) != per_slice or per_slice < 1):
        raise ValueError(f"per_slice must be an integer >= 1, got {per_slice}")
    ordered = sorted(candidates, key=lambda c: (-c.score, c.z, c.y, c.x))
    cap = math.ceil(k / max(len({c.z for c in ordered}), 1)) if per_slice is None else int(per_slice)
    taken, rest, used = [], [], {}
    for candidate in ordered:
        if len(taken) < k and used.get(candidate.z, 0) < cap:
            taken.append(candidate)
            used[candidate.z] = used.get(candidate.z, 0) + 1
        else:
            rest.append(candidate)
    if per_slice is None:
        taken += rest[: k - len(taken)]
    return sorted(taken, key=lambda c: (-c.score, c.z, c.y, c.x))


def suggestion_points(suggestions: Sequence[Suggestion]) -> np.ndarray:
    """(N, 3) int64 (z, y, x) of the suggestions, in their order (for `write_points`)."""
    return np.asarray([(s.z, s.y, s.x) for s in suggestions], dtype=np.int64).reshape(-1, 3)

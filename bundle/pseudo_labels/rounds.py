"""One pseudo-label round as pure functions: what `PseudoLabelRounds` schedules, testable without an engine.

`label_round` is a whole round of the target volume. For slice z, from the model's TTA prediction (probability,
density): count → new density peaks (β) → IPL (or threshold / entropy) labels → the density veto on background →
the outline rule → the clicked points (`label_slice`, then the rest in `label_round`).
The outline rule (`snap_to_membranes`) cuts pseudo-label outlines back to a dark membrane; it runs only where the
volume shows one (`dark_membrane_premise`, tested once per volume on the first round's labels), so that it cannot
shrink the mitochondria of a volume whose premise fails (dark interiors, inverted contrast, no membrane).
The round that decides the rule also measures how deep it cut (`outline_cut_depth`, px): the offset between the
starting model's outlines and the target's membranes, which `erode_outlines` applies to dense source labels so that
with-source training teaches the target's outline convention on both domains.
The class prior (`match_class_prior`, off by default: docs/results.md): a round labels a small share of the foreground
it should (only the clicked and confident instances) beside most of the background, so its plain cross-entropy teaches
"foreground is rare" and the model shrinks. `class_prior_weights` weighs the two classes so that the labelled pixels
count as if the starting model's foreground share (`foreground_share`, decided once per volume in the first round) were
foreground.
`slice_checks` / `click_checks` are the label-free checks of a round: held-out click recall, the instance count and
the predicted foreground share.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from bundle.errors import input_error
from bundle.losses.multitask import IGNORE_INDEX
from bundle.pseudo_labels.peaks import (
    confident_peaks,
    density_background_mask,
    estimate_count,
    select_new_peaks,
)
from bundle.pseudo_labels.selection import (
    FOREGROUND,
    add_point_labels,
    instances_with_points,
    pseudo_label,
    snap_to_membranes,
)

PROFILE_RADIUS = 8  # px either side of the outline in `membrane_profile`
MEMBRANE_WITHIN = 4  # px: the darkest ring must lie this close to the outline
MEMBRANE_DEPTH = 0.15  # z-score units the darkest ring must lie below both the interior and the exterior


@dataclass(frozen=True)
class RoundRule:
    """The pseudo-label rule of every round (paper III-B, III-C; docs/methods.md).

    Args:
        beta: share of the slice's count added as new density peaks (pseudo-points) per detection round.
        detection_rounds: rounds that add pseudo-points.
        omega_fractions: per round, the share of the count taken as IPL's confident peaks Ω.
        kind: "ipl", "threshold" or "entropy".
        label_kwargs: keyword arguments of the pseudo-label function.
        sigma: Gaussian bandwidth of the target densities (px).
        peak_min_distance: px between two density peaks, and from a known point to a new one.
        peak_threshold: lowest density of a peak.
        density_confirms_background: background only where the density head also sees no instance.
        point_radius: px of the disk around each clicked point that is foreground in every round.
        snap_to_membranes: cut outlines back to the membrane where the volume shows one (see module docstring).
        outline_margin: px of the pseudo-label the cut keeps beyond the membrane's darkest ridge (0: cut at the ridge).
        match_class_prior: weigh the cross-entropy's classes so that the labelled pixels carry the starting model's
            foreground share (`class_prior_weights`; see the module docstring).
    """

    beta: float = 0.2
    detection_rounds: int = 4
    omega_fractions: Sequence[float] = (0.0, 0.5, 0.95, 0.95)
    kind: str = "ipl"
    label_kwargs: dict = field(default_factory=dict)
    sigma: float = 11.0
    peak_min_distance: int = 7
    peak_threshold: float = 2e-4
    density_confirms_background: bool = False
    point_radius: float = 5.0
    snap_to_membranes: bool = False
    outline_margin: int = 0
    match_class_prior: bool = False

    def __post_init__(self):
        for name in ("density_confirms_background", "snap_to_membranes", "match_class_prior"):
            if not isinstance(getattr(self, name), bool):
                raise input_error(name, f"{getattr(self, name)!r} is not true or false", "pass True or False")
        margin = self.outline_margin
        if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0:
            raise input_error("outline_margin", f"{margin!r} is not a whole number of pixels from 0",
                              "pass 0 (cut at the membrane's darkest ridge) or a positive whole number, e.g. 1")  # fmt: skip

    @property
    def peaks(self) -> dict:
        """Keyword arguments of the peak functions."""
        return {"min_distance": self.peak_min_distance, "threshold_abs": self.peak_threshold}


@dataclass
class SliceRound:
    """One slice's round: its label before the outline rule and the points, its loss mask, its pseudo-points."""

    label: np.ndarray  # uint8 0 / 1 / IGNORE_INDEX
    density_mask: np.ndarray  # uint8: where the density loss applies
    target_density: np.ndarray  # the density the loss teaches: one Gaussian per clicked and pseudo point
    pseudo_points: np.ndarray  # (M, 2) y, x, the earlier rounds' and this round's new ones
    count: float  # the count used for β and Ω


def label_slice(
    rule: RoundRule,
    r: int,
    probability: np.ndarray,
    density: np.ndarray,
    gt_points: np.ndarray,
    pseudo_points: np.ndarray,
    count: float | None = None,
) -> SliceRound:
    """Round `r` (0-based) of one slice, up to (not including) the outline rule and the clicked points.

    `count` (the fixed count of the first round, with fixed_count) replaces the slice's density estimate for β and Ω.
    """
    from bundle.data.density import density_map

    count = estimate_count(density) if count is None else count
    known = np.concatenate([gt_points, pseudo_points])
    if r < rule.detection_rounds and rule.beta > 0:
        new = select_new_peaks(density, known, rule.beta, exclude_radius=rule.peak_min_distance, count=count, **rule.peaks)
        pseudo_points = np.concatenate([pseudo_points, new]).astype(np.int64)
    all_points = np.concatenate([gt_points, pseudo_points])
    background = density_background_mask(density, sigma=rule.sigma, points=all_points, **rule.peaks)
    target_density = density_map(all_points, density.shape, rule.sigma)
    mask = ((target_density > 1e-8) | background).astype(np.uint8)
    if rule.kind == "ipl":
        fraction = rule.omega_fractions[r]
        omega = confident_peaks(density, fraction, count=count, **rule.peaks) if fraction > 0 else np.zeros((0, 2), np.int64)
        label = pseudo_label("ipl", probability, points=omega, density=density, gt_points=gt_points, **rule.label_kwargs)
    else:
        label = pseudo_label(rule.kind, probability, **rule.label_kwargs)
    if rule.density_confirms_background:
        # cross-task teaching: background only where the detection head also sees no instance nearby
        label[(label == 0) & ~background] = IGNORE_INDEX
    return SliceRound(label, mask, target_density, pseudo_points, float(count))


@dataclass
class VolumeRound:
    """A whole round of the target slices: what `PseudoLabelRounds` writes to round_r and installs."""

    labels: np.ndarray  # (Z, Y, X) uint8 0 / 1 / IGNORE_INDEX: the labels the next epoch trains on
    density_masks: np.ndarray  # (Z, Y, X) uint8: where the density loss applies
    point_masks: np.ndarray  # (Z, Y, X) uint8: the label instances that hold a clicked point
    target_densities: list[np.ndarray]  # per slice: one Gaussian per clicked and pseudo point
    pseudo_points: list[np.ndarray]  # per slice (M, 2) y, x: the earlier rounds' and this round's new ones
    counts: list[float]  # per slice: the count used for β and Ω
    snap: bool | None  # the outline rule's decision for the volume (None: the rule is off)
    snap_reason: str
    outline_cut: float | None  # px the rule cut off the labels, when this round decided it (`outline_cut_depth`)
    checks: dict  # `click_checks` of the predictions (the model the round predicted with)
    class_prior: float | None  # the foreground share the classes are weighted to (None: `match_class_prior` off)


def label_round(
    rule: RoundRule,
    r: int,
    predictions: Iterable[tuple[np.ndarray, np.ndarray]],
    images: Sequence[np.ndarray],
    gt_points: Sequence[np.ndarray],
    pseudo_points: Sequence[np.ndarray],
    holdout_points: Sequence[np.ndarray],
    counts: Sequence[float] | None = None,
    snap: bool | None = None,
    snap_reason: str = "",
    class_prior: float | None = None,
) -> VolumeRound:
    """Round `r` (0-based) of every target slice.

    Args:
        rule: the pseudo-label rule.
        r: the round.
        predictions: per slice, the model's TTA (probability, density), consumed one slice at a time (a generator
            keeps one slice's prediction in memory).
        images: the normalised (Y, X) slices (the outline rule reads them).
        gt_points, pseudo_points, holdout_points: per slice (M, 2) y, x: the clicks trained on, the pseudo-points of
            the earlier rounds, the held-out clicks (only scored).
        counts: per slice, the count to use for β and Ω (fixed_count: the first round's); None: each slice's own.
        snap, snap_reason: the outline decision of an earlier round; None: decided here, on this round's labels
            before the rule, when `rule.snap_to_membranes` (once per volume: the caller keeps it).
        class_prior: the foreground share of an earlier round (`match_class_prior`); None: this round's predicted
            foreground share (the caller keeps the first round's).
    """
    slices, per_slice_checks = [], []
    for z, (probability, density) in enumerate(predictions):
        count = None if counts is None else counts[z]
        slices.append(label_slice(rule, r, probability, density, gt_points[z], pseudo_points[z], count=count))
        per_slice_checks.append(slice_checks(probability, density, holdout_points[z]))
    if len(slices) != len(images):
        raise ValueError(f"{len(slices)} predictions for {len(images)} slices")
    decided_here = rule.snap_to_membranes and snap is None
    if decided_here:
        snap, snap_reason = dark_membrane_premise(membrane_profile(images, [s.label for s in slices]))
    # the outline rule (when it holds: the pixels it cuts off are taught as background), then the clicked points
    cut = [snap_to_membranes(s.label, image, margin=rule.outline_margin) if snap else s.label for s, image in zip(slices, images)]
    outline_cut = outline_cut_depth([s.label for s in slices], cut) if decided_here else None
    labels = np.stack([add_point_labels(label, gt, radius=rule.point_radius) for label, gt in zip(cut, gt_points)])
    checks = click_checks(per_slice_checks)
    if rule.match_class_prior and class_prior is None:
        class_prior = checks["foreground_share"]
    prior = class_prior if rule.match_class_prior else None
    return VolumeRound(
        labels=labels,
        density_masks=np.stack([s.density_mask for s in slices]),
        point_masks=np.stack([instances_with_points(label, gt) for label, gt in zip(labels, gt_points)]),
        target_densities=[s.target_density for s in slices],
        pseudo_points=[s.pseudo_points for s in slices],
        counts=[s.count for s in slices],
        snap=snap if rule.snap_to_membranes else None,
        snap_reason=snap_reason,
        outline_cut=outline_cut,
        checks=checks,
        class_prior=prior,
    )


def class_prior_weights(labels: np.ndarray, prior: float) -> tuple[float, float]:
    """Cross-entropy weights (background, foreground) under which the labelled pixels of `labels` (0 / 1 / ignored)
    weigh as if a share `prior` of them were foreground: (1 − prior) / f_bg and prior / f_fg, with f the labelled
    shares, times f_bg + f_fg so that the mean weight of a labelled pixel stays 1. (1, 1) when a class is absent."""
    labels = np.asarray(labels)
    foreground, background = float((labels == FOREGROUND).mean()), float((labels == 0).mean())
    if foreground == 0 or background == 0:
        return 1.0, 1.0
    scale = foreground + background
    return (1.0 - prior) / background * scale, prior / foreground * scale


def outline_cut_depth(before: Sequence[np.ndarray], after: Sequence[np.ndarray]) -> float:
    """Mean depth (px) of what the outline rule cut off: foreground (1) pixels of `before` that `after` lost, over
    the outline pixels of `before` (foreground with a 4-neighbour outside it); 0 without foreground. A band cut d px
    deep along the whole outline gives about d."""
    removed = outline = 0
    for old, new in zip(before, after):
        foreground = np.asarray(old) == FOREGROUND
        removed += int((foreground & (np.asarray(new) != FOREGROUND)).sum())
        outline += int((foreground & ~ndimage.binary_erosion(foreground, border_value=1)).sum())
    return removed / outline if outline else 0.0


def erode_outlines(label: np.ndarray, depth: float) -> np.ndarray:
    """Copy of a binary (0 / 1) `label` whose foreground pixels within `depth` px of the outside (Euclidean distance
    from the pixel centre to the nearest background pixel's, so the outline ring is at 1) become background: a band
    about `depth` px deep, `outline_cut_depth`'s measure. Pixels of another value stay."""
    label = np.asarray(label)
    if depth <= 0:
        return label.copy()
    foreground = label == FOREGROUND
    eroded = label.copy()
    eroded[foreground & (ndimage.distance_transform_edt(foreground) <= depth)] = 0
    return eroded


def membrane_profile(images: Sequence[np.ndarray], labels: Sequence[np.ndarray], radius: int = PROFILE_RADIUS) -> np.ndarray:
    """Mean intensity at each signed distance −radius … +radius px from the foreground outlines of `labels`
    (negative inside), over all slices; NaN where no pixel lies at that distance."""
    sums, counts = np.zeros(2 * radius + 1), np.zeros(2 * radius + 1)
    for image, label in zip(images, labels):
        foreground = np.asarray(label) == FOREGROUND
        if not foreground.any() or foreground.all():
            continue
        inside = ndimage.distance_transform_edt(foreground)
        outside = ndimage.distance_transform_edt(~foreground)
        distance = np.rint(np.where(foreground, 0.5 - inside, outside - 0.5)).astype(int)
        near = np.abs(distance) <= radius
        np.add.at(sums, distance[near] + radius, np.asarray(image, np.float64)[near])
        np.add.at(counts, distance[near] + radius, 1)
    with np.errstate(invalid="ignore"):
        return sums / counts


def dark_membrane_premise(profile: np.ndarray) -> tuple[bool, str]:
    """Whether an intensity `profile` across the outlines (`membrane_profile`) shows a dark membrane: its darkest
    ring lies within MEMBRANE_WITHIN px of the outline and MEMBRANE_DEPTH below both the interior and the exterior
    ends. Returns (holds, the reason in words)."""
    if not np.all(np.isfinite(profile)):
        return False, "too few pseudo-labelled mitochondria to see their outlines"
    radius = len(profile) // 2
    darkest = int(np.argmin(profile)) - radius
    interior, exterior, ring = profile[0], profile[-1], float(profile.min())
    numbers = f"darkest ring {ring:+.2f} at {darkest:+d} px, interior {interior:+.2f}, exterior {exterior:+.2f}"
    if abs(darkest) > MEMBRANE_WITHIN:
        where = "inside the mitochondria (dark interiors)" if darkest < 0 else "outside them"
        return False, f"the darkest ring lies {where}, not at the outline ({numbers})"
    if ring > min(interior, exterior) - MEMBRANE_DEPTH:
        return False, f"no ring at the outline is darker than both sides (no dark membrane; {numbers})"
    return True, f"a dark membrane at the outline ({numbers})"


def slice_checks(probability: np.ndarray, density: np.ndarray, clicks: np.ndarray, threshold: float = 0.5,
                 min_size: int = 16) -> np.ndarray:  # fmt: skip
    """[held-out clicks inside the predicted foreground, held-out clicks, predicted instances (components of at
    least `min_size` px), the density head's count, predicted foreground pixels, pixels] of one slice's prediction;
    `clicks` are (M, 2) y, x."""
    foreground = np.asarray(probability) >= threshold
    components, n = ndimage.label(foreground)
    instances = int((np.bincount(components.ravel())[1:] >= min_size).sum()) if n else 0
    hits = int(foreground[clicks[:, 0], clicks[:, 1]].sum()) if len(clicks) else 0
    return np.array([hits, len(clicks), instances, estimate_count(density), foreground.sum(), foreground.size],
                    dtype=np.float64)  # fmt: skip


def click_checks(per_slice: Sequence[np.ndarray]) -> dict:
    """The label-free checks of a prediction of the adapted slices, from their `slice_checks`: the share of held-out
    clicks inside the predicted foreground (None without held-out clicks), the instance and density counts, and the
    share of pixels predicted foreground."""
    hits, total, instances, count, foreground, pixels = np.sum(per_slice, axis=0) if len(per_slice) else np.zeros(6)
    return {
        "holdout_clicks": int(total),
        "holdout_click_recall": round(float(hits / total), 4) if total else None,
        "instance_count": int(instances),
        "density_count": round(float(count), 1),
        "foreground_share": round(float(foreground / pixels), 5) if pixels else 0.0,
    }

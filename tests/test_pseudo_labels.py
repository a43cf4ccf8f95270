"""Pseudo-labels on hand-made slices: density peaks and counts, IPL / threshold / entropy labels, TTA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.inferers import SlidingWindowInferer

from bundle.data.density import density_map
from bundle.inference.postprocess import split_output
from bundle.networks.multitask_unet import MultiTaskUNet
from bundle.pseudo_labels import (
    add_point_labels,
    binary_entropy,
    confident_peaks,
    density_background_mask,
    entropy_pseudo_label,
    estimate_count,
    find_peaks,
    instance_aware_pseudo_label,
    pseudo_label,
    select_new_peaks,
    threshold_pseudo_label,
    tta_predict,
)

I = 255  # ignored
SHAPE = (96, 128)
FIVE = np.array([[20, 20], [20, 100], [48, 64], [76, 24], [76, 104]])  # ≥ 40 px apart, ≥ 20 px from the border
SIX = np.array([[20, 20], [20, 64], [20, 108], [76, 20], [76, 64], [76, 108]])


def _weighted_density(points: np.ndarray, weights: list[float], sigma: float = 5.0) -> np.ndarray:
    """Sum of w_i × a unit Gaussian at point i: mass Σ w_i, peak heights in the order of the weights."""
    return sum(w * density_map(p[None], SHAPE, sigma) for p, w in zip(points, weights))


# --------------------------------------------------------------------------------------------- peaks and counts


def test_count_and_peaks_of_five_gaussians() -> None:
    density = density_map(FIVE, SHAPE, sigma=5.0)
    assert estimate_count(density) == pytest.approx(5.0, rel=0.01)  # the Gaussian tails lift this small map's median
    coords, values = find_peaks(density)
    assert coords.shape == (5, 2) and coords.dtype == np.int64
    assert np.all(np.diff(values) <= 0)  # decreasing density
    # every true point is found within 1 px
    assert np.abs(coords[:, None, :] - FIVE[None]).max(axis=2).min(axis=0).max() <= 1


def test_peaks_come_in_decreasing_value_order() -> None:
    density = _weighted_density(FIVE, [0.8, 1.2, 0.9, 1.1, 1.0])
    coords, values = find_peaks(density)
    np.testing.assert_array_equal(coords, FIVE[[1, 3, 4, 2, 0]])
    np.testing.assert_allclose(values, density[FIVE[[1, 3, 4, 2, 0], 0], FIVE[[1, 3, 4, 2, 0], 1]])


def test_peaks_below_threshold_are_dropped() -> None:
    density = density_map(FIVE, SHAPE, sigma=5.0)  # peaks ≈ 1 / (2π·25) ≈ 6.4e-3
    assert len(find_peaks(density, threshold_abs=1e-2)[0]) == 0
    assert len(find_peaks(np.zeros(SHAPE))[0]) == 0


def test_select_new_peaks_excludes_known_points() -> None:
    density = _weighted_density(FIVE, [1.2, 1.1, 1.0, 0.9, 0.8])  # N = 5
    known = np.array([FIVE[0], FIVE[2] + [3, 4]])  # the 2nd known point is 5 px from peak 2
    # β = 0.4: round(0.4 × 5) = 2 new points, the two highest of peaks 1, 3, 4
    np.testing.assert_array_equal(select_new_peaks(density, known, 0.4), FIVE[[1, 3]])
    np.testing.assert_array_equal(select_new_peaks(density, known, 0.2), FIVE[[1]])  # round(1.0) = 1
    # exclusion radius 4 < 5 px: peak 2 is no longer "known" and, as the 2nd highest left, is taken
    np.testing.assert_array_equal(select_new_peaks(density, known, 0.4, exclude_radius=4.0), FIVE[[1, 2]])
    # WDA-Net's cumulative rule: reach round(0.8 × 5) = 4 points in all, 2 are known → 2 new
    np.testing.assert_array_equal(select_new_peaks(density, known, 0.8, cumulative=True), FIVE[[1, 3]])
    assert select_new_peaks(density, known, 0.2, cumulative=True).shape == (0, 2)
    # no known point: the highest round(0.6 × 5) = 3 peaks; more than exist: all the peaks there are
    np.testing.assert_array_equal(select_new_peaks(density, None, 0.6), FIVE[[0, 1, 2]])
    assert len(select_new_peaks(density, known, 1.0)) == 3


def test_confident_peaks_half_of_six_is_the_three_highest() -> None:
    density = _weighted_density(SIX, [0.75, 1.25, 0.95, 1.15, 0.85, 1.05])  # N = 6
    assert estimate_count(density) == pytest.approx(6.0, rel=0.02)  # the Gaussian tails lift this small map's median
    np.testing.assert_array_equal(confident_peaks(density, 0.5), SIX[[1, 3, 5]])
    assert len(confident_peaks(density, 0.95)) == 6  # round(5.7)
    assert confident_peaks(density, 0.0).shape == (0, 2)
    with pytest.raises(ValueError, match="fraction"):
        confident_peaks(density, 1.5)


def test_estimate_count_ignores_the_density_floor() -> None:
    # 4 instances on a 300x400 slice plus a constant floor of 1e-4 per pixel (a softplus head's): the raw mass is
    # 4 + 12 = 16, the floor-removed count stays 4
    density = density_map(np.array([[50, 50], [50, 300], [200, 100], [250, 350]]), (300, 400), sigma=11.0) + 1e-4
    assert float(density.sum()) == pytest.approx(16.0, rel=1e-4)
    assert estimate_count(density) == pytest.approx(4.0, rel=0.01)


def test_density_background_mask_ignores_the_floor() -> None:
    density = density_map(FIVE[:2], SHAPE, sigma=5.0)
    np.testing.assert_array_equal(density_background_mask(density + 1e-4, sigma=5.0), density_background_mask(density, sigma=5.0))


def test_density_background_mask_near_and_far() -> None:
    density = density_map(FIVE[:2], SHAPE, sigma=5.0)  # peaks at (20, 20) and (20, 100)
    mask = density_background_mask(density, sigma=5.0)  # radius 3σ = 15 px, density < 1e-5
    assert mask.dtype == bool and mask.shape == SHAPE
    assert not mask[20, 20] and not mask[20, 30] and not mask[32, 100]  # on / 10 px / 12 px from a peak
    assert mask[80, 60] and mask[95, 0]  # far from both
    assert not mask[20, 36]  # 16 px away: beyond 3σ, but the Gaussian (≈ 4.8e-5) is not below `low` yet
    # no peak and no density: everything is background; density just under the peak threshold: nothing is
    assert density_background_mask(np.zeros(SHAPE)).all()
    assert density_background_mask(np.full(SHAPE, 1e-4)).all()  # a uniform map is all floor: all background
    # a known point counts as a peak even where the density is empty
    with_point = density_background_mask(np.zeros(SHAPE), sigma=5.0, points=np.array([[50, 50]]))
    assert not with_point[50, 60] and with_point[50, 70]


# ---------------------------------------------------------------------------------- segmentation pseudo-labels


def _ipl_scene() -> tuple[np.ndarray, np.ndarray]:
    """A 20×30 probability slice with three components and its expected IPL for points in A and C."""
    p = np.full((20, 30), 0.1)
    p[2:7, 2:9] = 0.9  # A: holds a point
    p[10:15, 2:9] = 0.8  # B: no point
    p[2:7, 15:23] = 0.95  # C: holds a point, carries no density in the false-positive test
    p[16:19, 20:29] = 0.5  # uncertain band
    expected = np.zeros((20, 30), np.uint8)
    expected[2:7, 2:9] = 1
    expected[10:15, 2:9] = I
    expected[2:7, 15:23] = 1
    expected[16:19, 20:29] = I
    return p, expected


POINTS_AC = np.array([[4, 5], [3, 20]])


def test_ipl_keeps_components_with_a_point_and_ignores_the_others() -> None:
    p, expected = _ipl_scene()
    label = instance_aware_pseudo_label(p, POINTS_AC)
    assert label.dtype == np.uint8
    np.testing.assert_array_equal(label, expected)


def test_ipl_point_on_background_or_uncertain_pixel_changes_nothing() -> None:
    p, _ = _ipl_scene()
    plain = instance_aware_pseudo_label(p, POINTS_AC)
    extra = np.concatenate([POINTS_AC, [[18, 2], [17, 25]]])  # on background (0.1) and on the 0.5 band
    np.testing.assert_array_equal(instance_aware_pseudo_label(p, extra), plain)
    none = instance_aware_pseudo_label(p, np.zeros((0, 2)))
    assert not (none == 1).any() and (none[p <= 0.3] == 0).all()


def test_ipl_uses_four_connectivity() -> None:
    p = np.zeros((8, 8))
    p[1:4, 1:4] = 0.9
    p[4:7, 4:7] = 0.9  # touches the first square only at a corner
    label = instance_aware_pseudo_label(p, np.array([[2, 2]]))
    assert (label[1:4, 1:4] == 1).all() and (label[4:7, 4:7] == I).all()


def test_ipl_drops_components_without_density_mass() -> None:
    p, expected = _ipl_scene()
    density = np.zeros_like(p)
    density[2:7, 2:9] = 1.0 / 35  # one instance of mass inside A, none inside C
    label = instance_aware_pseudo_label(p, POINTS_AC, density=density)
    expected[2:7, 15:23] = I  # C: a false positive of the segmentation → ignored, never foreground
    np.testing.assert_array_equal(label, expected)
    assert (label[2:7, 2:9] == 1).all()
    # 0.25 instance in A is below the default 0.3 and above 0.2
    weak = density * 0.25
    assert (instance_aware_pseudo_label(p, POINTS_AC, density=weak)[2:7, 2:9] == I).all()
    assert (instance_aware_pseudo_label(p, POINTS_AC, density=weak, min_density_mass=0.2)[2:7, 2:9] == 1).all()
    # a ground-truth point is trusted: its component stays even without density
    trusted = instance_aware_pseudo_label(p, POINTS_AC[:1], density=density, gt_points=POINTS_AC[1:])
    assert (trusted[2:7, 15:23] == 1).all()


def test_ipl_point_less_component_without_density_becomes_background() -> None:
    p, expected = _ipl_scene()
    density = np.full_like(p, 1e-4)  # a softplus-like floor: 35 px of B carry 0.0035 "instances" of it
    density[2:7, 2:9] += 1.0 / 35  # one instance in A; C has a ground-truth point and B neither point nor density
    label = instance_aware_pseudo_label(p, POINTS_AC[:1], density=density, gt_points=POINTS_AC[1:], unsupported_background_mass=0.1)
    expected[10:15, 2:9] = 0  # B: the detection head sees no instance there → background
    np.testing.assert_array_equal(label, expected)
    # with half an instance in B, B is a possible unlabelled mitochondrion and stays ignored; off by default
    density[10:15, 2:9] += 0.5 / 35
    assert (instance_aware_pseudo_label(p, POINTS_AC, density=density, unsupported_background_mass=0.1)[10:15, 2:9] == I).all()
    assert (instance_aware_pseudo_label(p, POINTS_AC, density=density * 0)[10:15, 2:9] == I).all()


def test_ipl_thresholds_and_bad_input() -> None:
    p, _ = _ipl_scene()
    # at threshold 0.85, B (0.8) is not foreground at all; at 0.96 nothing is
    assert (instance_aware_pseudo_label(p, np.array([[12, 5]]), threshold=0.85)[10:15, 2:9] == I).all()
    assert (instance_aware_pseudo_label(p, np.array([[12, 5]]), threshold=0.75)[10:15, 2:9] == 1).all()
    assert not (instance_aware_pseudo_label(p, POINTS_AC, threshold=0.96) == 1).any()
    for outside in ([[20, 3]], [[-1, 3]], [[3, 30]]):
        with pytest.raises(ValueError, match="outside"):
            instance_aware_pseudo_label(p, np.array(outside))
    with pytest.raises(ValueError, match="background_threshold"):
        instance_aware_pseudo_label(p, POINTS_AC, threshold=0.5, background_threshold=0.6)
    with pytest.raises(ValueError, match="2D"):
        instance_aware_pseudo_label(p[None], POINTS_AC)


ROW = np.array([[0.02, 0.5, 0.97]])
# normalised binary entropies H(p) / ln 2: H(0.02) = 0.14144, H(0.5) = 1, H(0.97) = 0.19439


def test_threshold_pseudo_label_row() -> None:
    np.testing.assert_array_equal(threshold_pseudo_label(ROW), [[0, I, 1]])  # 0.9: 0.02 ≤ 0.1, 0.97 ≥ 0.9
    np.testing.assert_array_equal(threshold_pseudo_label(ROW, threshold=0.975), [[0, I, I]])  # 0.97 < 0.975
    with pytest.raises(ValueError, match="threshold"):
        threshold_pseudo_label(ROW, threshold=0.4)


def test_binary_entropy_row() -> None:
    np.testing.assert_allclose(binary_entropy(ROW), [[0.14144, 1.0, 0.19439]], atol=1e-5)
    np.testing.assert_array_equal(binary_entropy(np.array([0.0, 1.0])), [0.0, 0.0])


def test_entropy_pseudo_label_fixed_limit() -> None:
    np.testing.assert_array_equal(entropy_pseudo_label(ROW, percentile=None), [[0, I, 1]])  # limit 0.5
    np.testing.assert_array_equal(entropy_pseudo_label(ROW, max_entropy=0.15, percentile=None), [[0, I, I]])
    np.testing.assert_array_equal(entropy_pseudo_label(ROW, max_entropy=0.1, percentile=None), [[I, I, I]])


def test_entropy_pseudo_label_class_percentile() -> None:
    row = np.array([[0.01, 0.02, 0.5, 0.6, 0.65, 0.7, 0.8, 0.85]])
    # background (argmax 0: 0.01, 0.02, 0.5): entropies 0.0808, 0.1414, 1.0 → P80 = 0.6566 → 0.5 ignored
    # foreground: entropies 0.9710, 0.9341, 0.8813, 0.7219, 0.6098 → P80 = 0.9414 → only 0.6 ignored
    np.testing.assert_array_equal(entropy_pseudo_label(row), [[0, 0, I, I, 1, 1, 1, 1]])
    # the fixed limit alone keeps fewer foreground pixels: entropy ≤ 0.5 ⇔ p ≥ 0.89
    np.testing.assert_array_equal(entropy_pseudo_label(row, percentile=None), [[0, 0, I, I, I, I, I, I]])


def test_pseudo_label_dispatch() -> None:
    p, expected = _ipl_scene()
    np.testing.assert_array_equal(pseudo_label("ipl", p, points=POINTS_AC), expected)
    np.testing.assert_array_equal(pseudo_label("threshold", ROW, points=POINTS_AC, threshold=0.9), [[0, I, 1]])
    np.testing.assert_array_equal(pseudo_label("entropy", ROW, density=np.ones((1, 3)), percentile=None), [[0, I, 1]])
    with pytest.raises(ValueError, match="unknown pseudo-label kind 'otsu'"):
        pseudo_label("otsu", p)
    with pytest.raises(ValueError, match="needs the confident points"):
        pseudo_label("ipl", p)


def test_add_point_labels() -> None:
    label = np.full((9, 9), I, np.uint8)
    label[:, :2] = 0
    one = add_point_labels(label, np.array([[4, 4]]))
    assert (one == 1).sum() == 1 and one[4, 4] == 1
    assert (add_point_labels(label, np.array([[4, 4]]), radius=1) == 1).sum() == 5  # a plus sign
    assert (add_point_labels(label, np.array([[4, 4]]), radius=1.5) == 1).sum() == 9  # a 3×3 square
    fused = add_point_labels(label, np.array([[4, 1]]), radius=1)  # columns 0-1 background, 2 ignored
    assert fused[4, 0] == 1 and fused[4, 1] == 1 and fused[4, 2] == 1  # points beat background and ignore
    assert (label != 1).all()  # the input is not modified
    np.testing.assert_array_equal(add_point_labels(label, np.zeros((0, 2))), label)
    with pytest.raises(ValueError, match="outside"):
        add_point_labels(label, np.array([[9, 0]]))


# ------------------------------------------------------------------------------------------------------------ TTA


def _pointwise_net() -> torch.nn.Module:
    """A 1×1 conv with 3 output channels: equivariant to every flip and rotation."""
    net = torch.nn.Conv2d(1, 3, kernel_size=1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[[[1.0]]], [[[-2.0]]], [[[0.5]]]]))
        net.bias.copy_(torch.tensor([0.1, 0.3, 1.0]))
    return net


INFERER = SlidingWindowInferer(roi_size=(16, 16), sw_batch_size=2, overlap=0.25)


def test_tta_of_an_equivariant_network_is_the_plain_prediction() -> None:
    torch.manual_seed(0)
    net = _pointwise_net()
    image = torch.rand(1, 1, 24, 40)  # H ≠ W and no symmetry: a wrong inverse would show
    probability, density = tta_predict(net, image, INFERER)
    plain_probability, plain_density = split_output(net(image))
    assert probability.shape == density.shape == (1, 1, 24, 40)
    torch.testing.assert_close(probability, plain_probability.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(density, plain_density.detach(), atol=1e-5, rtol=1e-5)
    assert not probability.requires_grad and not density.requires_grad


def test_tta_averages_the_undone_views() -> None:
    torch.manual_seed(1)
    net = torch.nn.Conv2d(1, 3, kernel_size=3, padding=1)  # orientation-dependent
    image = torch.rand(1, 1, 12, 20)
    probability, density = tta_predict(net, image, lambda x, n: n(x))
    views = [
        (lambda a: a, lambda a: a),
        (lambda a: np.flip(a, -2), lambda a: np.flip(a, -2)),
        (lambda a: np.flip(a, -1), lambda a: np.flip(a, -1)),
        (lambda a: np.rot90(a, 1, (-2, -1)), lambda a: np.rot90(a, 3, (-2, -1))),
        (lambda a: np.rot90(a, 3, (-2, -1)), lambda a: np.rot90(a, 1, (-2, -1))),
    ]
    expected_p, expected_d = np.zeros((1, 1, 12, 20)), np.zeros((1, 1, 12, 20))
    for forward, inverse in views:
        with torch.no_grad():
            p, d = split_output(net(torch.from_numpy(forward(image.numpy()).copy())))
        expected_p += inverse(p.numpy()) / 5
        expected_d += inverse(d.numpy()) / 5
    np.testing.assert_allclose(probability.numpy(), expected_p, atol=1e-6)
    np.testing.assert_allclose(density.numpy(), expected_d, atol=1e-6)


def test_tta_with_the_multitask_unet_on_a_non_square_slice() -> None:
    torch.manual_seed(2)
    net = MultiTaskUNet(width=4).eval()
    probability, density = tta_predict(net, torch.rand(1, 1, 40, 56), SlidingWindowInferer(roi_size=(32, 32)))
    assert probability.shape == density.shape == (1, 1, 40, 56)
    assert float(probability.min()) >= 0.0 and float(probability.max()) <= 1.0
    assert float(density.min()) >= 0.0
    with pytest.raises(ValueError, match="B, C, H, W"):
        tta_predict(net, torch.rand(1, 40, 56), INFERER)


def test_snap_to_membranes_cuts_a_too_wide_outline_back_to_the_dark_ring() -> None:
    from bundle.pseudo_labels import snap_to_membranes

    yy, xx = np.mgrid[:64, :64]
    radius = np.hypot(yy - 32, xx - 32)
    image = np.where(radius <= 10, 0.5, 1.0)  # a mitochondrion (0.5) on brighter cytoplasm (1.0) ...
    image[(radius > 8.5) & (radius <= 10)] = 0.0  # ... inside its dark membrane
    label = np.full((64, 64), 255, np.uint8)
    label[radius <= 12.5] = 1  # pseudo-label 2-3 px too wide (the eroded marker, 3 px in, reaches the membrane)
    label[radius > 30] = 0
    snapped = snap_to_membranes(label, image)
    inside = snapped == 1
    assert inside[radius <= 8].all() and not inside[radius > 10.5].any()  # the outline now lies on the membrane
    assert (snapped[(radius > 10.5) & (radius <= 12.5)] == 0).all()  # cut-off pixels are background
    assert (snapped[(radius > 12.5) & (radius <= 30)] == 255).all() and (snapped[radius > 30] == 0).all()  # rest kept
    assert not ((snapped == 1) & (label != 1)).any()  # it only shrinks
    kept = snap_to_membranes(label, image, margin=1) == 1  # the margin keeps one more ring beyond the cut
    assert kept[radius <= 10.5].all() and not kept[radius > 11.9].any() and kept.sum() > inside.sum()
    assert not (kept & (label != 1)).any()
    empty = np.zeros((8, 8), np.uint8)
    np.testing.assert_array_equal(snap_to_membranes(empty, np.ones((8, 8))), empty)
    with pytest.raises(ValueError, match="shape"):
        snap_to_membranes(label, image[:10])


def _snap_by_a_whole_slice_flood(label: np.ndarray, image: np.ndarray, margin: int) -> np.ndarray:
    """The outline rule's plain form: one watershed over every pixel of the slice (erode 3, ring 10, sigma 1)."""
    from scipy import ndimage
    from skimage.segmentation import watershed

    foreground = label == 1
    markers = np.zeros(label.shape, np.int32)
    markers[~ndimage.binary_dilation(foreground, iterations=10)] = 1
    markers[ndimage.binary_erosion(foreground, iterations=3)] = 2
    inside = watershed(-ndimage.gaussian_filter(image.astype(np.float64), 1.0), markers) == 2
    if margin:
        inside = ndimage.binary_dilation(inside, iterations=margin)
    snapped = label.copy()
    snapped[foreground & ~inside] = 0
    return snapped


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_snap_to_membranes_floods_only_the_band_and_finds_the_whole_slice_basins(seed: int) -> None:
    from scipy import ndimage

    from bundle.pseudo_labels import snap_to_membranes

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:160, :200]
    image = rng.normal(1.0, 0.15, (160, 200))
    label = np.full((160, 200), 255, np.uint8)
    label[rng.random((160, 200)) < 0.5] = 0
    for _ in range(14):  # mitochondria of several sizes, some touching each other or the border, with dark membranes
        cy, cx, r = rng.integers(0, 160), rng.integers(0, 200), rng.integers(4, 18)
        radius = np.hypot(yy - cy, xx - cx)
        image[radius <= r] = 0.6
        image[(radius > r - 1.5) & (radius <= r)] = 0.1
        label[radius <= r + rng.integers(-2, 4)] = 1
    flat = np.round(ndimage.uniform_filter(image, 9) * 2) / 2  # flat plateaus: equal elevations, ties in the flood
    for volume in (image, flat):
        for margin in (0, 1):
            np.testing.assert_array_equal(snap_to_membranes(label, volume, margin=margin),
                                          _snap_by_a_whole_slice_flood(label, volume, margin))  # fmt: skip

"""Instances from probability maps: connected components and density-seeded watershed."""

from __future__ import annotations

import numpy as np
import pytest

from bundle.data.density import density_map
from bundle.inference import instances_from_prediction
from bundle.inference.postprocess import label_instances


def _touching_discs() -> tuple[np.ndarray, np.ndarray]:
    """Two discs of radius 8 whose edges overlap, as one foreground blob, and the density of their centres."""
    yy, xx = np.mgrid[:40, :60]
    centres = [(20, 20), (20, 34)]
    mask = np.zeros((40, 60), bool)
    for cy, cx in centres:
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= 64
    return mask.astype(np.float32), density_map(np.array(centres), (40, 60), sigma=3.0)


def test_components_merge_touching_objects_and_drop_small_ones() -> None:
    probability, density = _touching_discs()
    probability[2, 2] = 1.0  # a one-pixel speck is removed by min_size
    instances = instances_from_prediction(probability, density, method="components", min_size=16)
    assert sorted(np.unique(instances).tolist()) == [0, 1]


def test_watershed_splits_touching_objects_at_density_peaks() -> None:
    probability, density = _touching_discs()
    instances = instances_from_prediction(probability, density, method="watershed", peak_min_distance=5, peak_threshold=1e-4)
    ids = np.unique(instances[instances > 0])
    assert len(ids) == 2
    assert instances[20, 20] != instances[20, 34]
    assert (instances > 0).sum() == (probability >= 0.5).sum()  # watershed loses no foreground


def test_watershed_keeps_components_without_a_peak() -> None:
    probability, _ = _touching_discs()
    instances = instances_from_prediction(probability, np.zeros_like(probability), method="watershed")
    assert len(np.unique(instances[instances > 0])) == 1


def test_threshold_and_bad_method() -> None:
    probability = np.full((8, 8), 0.6, np.float32)
    assert instances_from_prediction(probability, threshold=0.7, min_size=0).max() == 0
    with pytest.raises(ValueError):
        instances_from_prediction(probability, method="magic")


@pytest.mark.parametrize("shape", [(120, 150), (12, 40, 50)])
def test_components_are_skimage_face_connected_labels_in_int32(shape: tuple[int, ...]) -> None:
    """scipy's int32 labelling gives the ids of skimage's label(connectivity=1), in half its memory."""
    from scipy.ndimage import gaussian_filter
    from skimage.measure import label

    probability = gaussian_filter(np.random.default_rng(0).random(shape), 1.5).astype(np.float32)
    probability = (probability - probability.min()) / np.ptp(probability)
    instances = label_instances(probability, threshold=0.5, min_size=1)
    assert instances.dtype == np.int32 and instances.max() > 3
    assert np.array_equal(instances, label(probability >= 0.5, connectivity=1))

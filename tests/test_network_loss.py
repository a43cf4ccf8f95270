"""Network output contract, density maps and the multitask loss on hand-worked values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.inferers import SlidingWindowInferer

from bundle.data.density import centre_density, density_map, instance_centres
from bundle.losses import IGNORE_INDEX, MultiTaskLoss
from bundle.networks import MultiTaskUNet, forward_with_features


@pytest.fixture(scope="module")
def network() -> MultiTaskUNet:
    torch.manual_seed(0)
    return MultiTaskUNet(width=8).eval()


def test_forward_is_one_tensor_with_nonnegative_density(network: MultiTaskUNet) -> None:
    x = torch.randn(2, 1, 64, 96)
    out = network(x)
    assert out.shape == (2, 3, 64, 96)
    assert torch.all(out[:, 2] >= 0)
    same, features = forward_with_features(network, x)
    assert torch.allclose(same, out) and features.shape == (2, network.feature_channels, 64, 96)


def test_torchscript_matches_eager(network: MultiTaskUNet) -> None:
    x = torch.randn(1, 1, 64, 64)
    scripted = torch.jit.script(network)
    assert torch.allclose(scripted(x), network(x), atol=1e-5)


def test_sliding_window_with_buffer_steps(network: MultiTaskUNet) -> None:
    x = torch.randn(1, 1, 96, 160)
    with torch.no_grad():
        plain = SlidingWindowInferer(roi_size=(64, 64), overlap=0.25, mode="gaussian")(x, network)
        buffered = SlidingWindowInferer(roi_size=(64, 64), overlap=0.25, mode="gaussian", buffer_steps=1)(x, network)
    assert plain.shape == (1, 3, 96, 160)
    assert torch.allclose(plain, buffered, atol=1e-5)


def test_width_sets_channels() -> None:
    assert MultiTaskUNet(width=4).features == (4, 4, 8, 16, 32, 4)
    with pytest.raises(ValueError):
        MultiTaskUNet(features=(4, 8))


def test_centre_is_max_of_distance_transform() -> None:
    instances = np.zeros((20, 30), np.int32)
    instances[2:7, 3:14] = 4  # 5 x 11 box: distance 3 from the border on row 4, cols 5..11
    instances[10:19, 20:29] = 9  # 9 x 9 box: unique centre (14, 24)
    centres = instance_centres(instances)
    assert centres.tolist()[1] == [14, 24]
    assert centres[0][0] == 4 and 5 <= centres[0][1] <= 11


def test_density_mass_equals_number_of_points() -> None:
    points = np.array([[0, 0], [10, 10], [39, 49], [20, 25]])  # corners included: no mass may leak out
    density = density_map(points, (40, 50), sigma=5.0)
    assert density.sum() == pytest.approx(4.0, rel=1e-5)
    assert density.min() >= 0
    assert centre_density(np.zeros((8, 8), np.int32), 3.0).sum() == 0


def test_loss_equals_hand_computed_value() -> None:
    # one image of 1 x 2 pixels: logits (0, 0) -> CE = ln 2 on each labelled pixel; pixel 2 is ignored
    pred = torch.zeros(1, 3, 1, 2)
    pred[0, 2] = torch.tensor([[0.002, 0.0]])  # density prediction
    target = {
        "label": torch.tensor([[[[1, IGNORE_INDEX]]]]),
        "density": torch.tensor([[[[0.001, 0.0]]]]),
    }
    loss = MultiTaskLoss(lambda_density=0.5, density_scale=1000.0)(pred, target)
    # density L2 in scaled units: ((2 - 1)^2 + 0^2) / 2 = 0.5; total = ln 2 + 0.5 * 0.5
    assert loss.item() == pytest.approx(math.log(2) + 0.25, rel=1e-5)
    masked = MultiTaskLoss(lambda_density=1.0)(pred, {**target, "density_mask": torch.tensor([[[[0, 1]]]])})
    assert masked.item() == pytest.approx(math.log(2), rel=1e-5)  # the only unmasked pixel has zero error


def test_loss_all_ignored_is_finite_and_backpropagates() -> None:
    pred = torch.zeros(1, 3, 2, 2, requires_grad=True)
    target = {"label": torch.full((1, 1, 2, 2), IGNORE_INDEX), "density": torch.zeros(1, 1, 2, 2)}
    loss = MultiTaskLoss()(pred, target)
    loss.backward()
    assert torch.isfinite(loss) and pred.grad is not None

"""The prediction runtimes (bundle/inference/runtime.py): the OpenVINO copy agrees with eager PyTorch, keeps the
weights it was made with, and a wrong runtime is one line; SkipUpCat computes what MONAI's UpCat does; the floor
benchmark runs and prints its side-by-side rows."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch
from monai.inferers import SlidingWindowInferer
from monai.networks.nets.basic_unet import UpCat

from bundle.data.dataset import normalize_slice
from bundle.inference import VolumePredictor
from bundle.inference.runtime import OpenVINONetwork, prediction_network, resolve_runtime
from bundle.networks import MultiTaskUNet, load_checkpoint
from bundle.networks.multitask_unet import SkipUpCat
from tests.helpers import EPFL, REPO, need, raises_one_line, run_bundle


@pytest.fixture(scope="module")
def shipped() -> torch.nn.Module:
    return load_checkpoint(MultiTaskUNet(), REPO / "models" / "model.pt").eval()


@pytest.fixture(scope="module")
def epfl_crop() -> np.ndarray:
    """A normalised 200 x 300 crop of EPFL slice 120 (sizes that are not multiples of 16: the padded branch)."""
    return normalize_slice(tifffile.imread(need(EPFL / "training.tif"), key=120)[100:300, 200:500])


def test_openvino_probability_agrees_with_eager(shipped, epfl_crop):
    """The fast path's probability differs from eager by <= 1e-3 through the whole slice path (windows smaller than
    the slice, Gaussian blending, a window shape and a shrunk one), and its instances cover the same pixels."""
    inferer = SlidingWindowInferer((128, 128), sw_batch_size=2, overlap=0.25, mode="gaussian")
    eager = VolumePredictor(shipped, inferer, runtime="eager", progress=False)
    fast = VolumePredictor(shipped, inferer, runtime="openvino", progress=False)
    assert isinstance(fast.network, OpenVINONetwork) and eager.network is shipped
    (p0, d0, i0), (p1, d1, i1) = eager.predict_image(epfl_crop), fast.predict_image(epfl_crop)
    assert (p0 >= 0.5).mean() > 0.02, "the crop should hold mitochondria"
    assert np.abs(p1 - p0).max() <= 1e-3
    assert np.abs(d1 - d0).max() <= 1e-6  # density: instances per pixel, ~1e-3 at a centre
    assert ((i0 > 0) != (i1 > 0)).mean() <= 1e-3
    small = torch.as_tensor(epfl_crop[:40, :56])[None, None]  # a slice smaller than the window: its own shape
    with torch.no_grad():
        assert (fast.network(small) - shipped(small)).abs().max() <= 1e-3


def test_openvino_copy_keeps_the_weights_it_was_made_with(shipped):
    network = MultiTaskUNet()
    network.load_state_dict(shipped.state_dict())
    x = torch.randn(1, 1, 64, 64)
    before = prediction_network(network, "openvino")
    with torch.no_grad():
        expected = network.eval()(x)
        for parameter in network.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
        changed = network(x)
    assert (before(x) - expected).abs().max() <= 1e-3  # a shape it meets first after the change: the old weights
    assert (prediction_network(network, "openvino")(x) - changed).abs().max() <= 1e-3
    assert (changed - expected).abs().max() > 0.1


def test_runtime_choice_and_errors():
    assert resolve_runtime("auto", "cpu") == "openvino"
    assert resolve_runtime("auto", "cuda") == "eager"
    assert resolve_runtime("eager", "cpu") == "eager"
    raises_one_line(resolve_runtime, "onnx", "cpu", name="--runtime")
    raises_one_line(resolve_runtime, "openvino", "cuda", name="--runtime")


def test_bad_runtime_on_the_command_line_is_one_line(tmp_path):
    result = run_bundle("--config_file", "configs/inference.yaml", "--input_image", str(need(EPFL / "training.tif")),
                        "--slices", "120", "--output_dir", str(tmp_path / "out"), "--runtime", "onnx")  # fmt: skip
    assert result.returncode != 0
    assert "--runtime: 'onnx' is not a runtime; use one of auto, eager, openvino" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("shape", [(32, 48), (25, 37)])
def test_skip_upcat_computes_what_upcat_does(shape):
    """SkipUpCat skips only MONAI's zero-width pad: the same outputs, with and without an odd encoder size."""
    torch.manual_seed(0)
    act, norm = ("LeakyReLU", {"negative_slope": 0.1}), ("instance", {"affine": True})
    monai_block = UpCat(2, 32, 16, 16, act, norm, True, 0.0, "deconv")
    ours = SkipUpCat(2, 32, 16, 16, act, norm, True, 0.0, "deconv")
    ours.load_state_dict(monai_block.state_dict())
    x_e = torch.randn(2, 16, *shape)
    x = torch.randn(2, 32, shape[0] // 2, shape[1] // 2)
    assert torch.equal(ours(x, x_e), monai_block(x, x_e))


def test_speed_benchmark_prints_its_rows():
    """`python -m bundle.speed` on a small slice: every row, eager and fast side by side, with a ratio."""
    result = subprocess.run([sys.executable, "-m", "bundle.speed", "--sizes", "256", "--repeats", "1", "--no_busy"],
                            cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert any(line.startswith("matmul 2048² fp32:") and "GFLOP per megapixel" in line for line in lines)
    for name in ("window 512²", "slice 256²", "train step"):
        row = next(line for line in lines if line.startswith(name))
        assert float(row.split("x  ")[0].split()[-1]) > 0
    assert "max |Δ probability|" in result.stdout

"""Model Zoo release: metadata.json per the MONAI bundle spec, TorchScript export of models/model.pt."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from monai.bundle import ConfigParser
from monai.data import load_net_with_metadata

from bundle.data.dataset import normalize_slices
from bundle.metrics.evaluate import METRIC_KEYS
from bundle.networks import load_checkpoint
from tests.helpers import EPFL, REPO, need

META = REPO / "configs" / "metadata.json"
# mandatory keys of the MONAI bundle spec (required_packages_version replaces optional_packages_version)
SPEC_KEYS = (
    "version", "monai_version", "pytorch_version", "numpy_version", "required_packages_version",
    "task", "description", "authors", "copyright", "network_data_format",
)  # fmt: skip
# optional in the spec, required for our Model Zoo release
RELEASE_KEYS = (
    "changelog", "data_source", "data_type", "image_classes", "label_classes", "pred_classes",
    "eval_metrics", "intended_use", "references",
)  # fmt: skip
# keys every tensor format specifier must have
TENSOR_KEYS = (
    "type", "format", "modality", "num_channels", "spatial_shape", "dtype", "value_range", "is_patch_data",
    "channel_def",
)  # fmt: skip
CROP = (slice(128, 384), slice(128, 384))  # a window with several mitochondria in EPFL slice 120


@pytest.fixture(scope="module")
def meta() -> dict:
    """configs/metadata.json."""
    return json.loads(META.read_text())


def train_network() -> torch.nn.Module:
    """network_def of configs/train.yaml, instantiated by MONAI's ConfigParser."""
    parser = ConfigParser()
    parser.read_config(str(REPO / "configs" / "train.yaml"))
    return parser.get_parsed_content("network_def")


def installed(package: str) -> str:
    """Installed version of a distribution, without a local build tag (2.13.0+cpu -> 2.13.0)."""
    return version(package).split("+")[0]


def test_metadata_has_every_required_key(meta: dict) -> None:
    missing = [key for key in (*SPEC_KEYS, *RELEASE_KEYS) if key not in meta or meta[key] in ("", None, [], {})]
    assert not missing, missing
    for io in ("inputs", "outputs"):
        assert meta["network_data_format"][io], io
        for name, spec in meta["network_data_format"][io].items():
            assert not [key for key in TENSOR_KEYS if key not in spec], (io, name)
            assert spec["num_channels"] == len(spec["channel_def"]), (io, name)
    assert meta["version"] in meta["changelog"], "the current version needs a changelog line"
    assert set(meta["eval_metrics"]) <= set(METRIC_KEYS), meta["eval_metrics"]


def test_metadata_versions_are_the_installed_ones(meta: dict) -> None:
    assert meta["monai_version"] == installed("monai")
    assert meta["pytorch_version"] == installed("torch")
    assert meta["numpy_version"] == installed("numpy")
    pinned = meta["required_packages_version"]
    wrong = {name: (want, installed(name)) for name, want in pinned.items() if want != installed(name)}
    assert not wrong, wrong


def test_metadata_output_channels_match_the_network(meta: dict) -> None:
    pred = meta["network_data_format"]["outputs"]["pred"]
    image = meta["network_data_format"]["inputs"]["image"]
    network = train_network().eval()
    with torch.no_grad():
        out = network(torch.zeros(1, image["num_channels"], 64, 64))
    assert out.shape == (1, 3, 64, 64)
    assert len(pred["channel_def"]) == pred["num_channels"] == out.shape[1] == 3


def export(filepath: Path) -> subprocess.CompletedProcess:
    """The README's export command: models/model.pt -> TorchScript at `filepath` with metadata and config."""
    return subprocess.run(
        [
            sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(filepath),
            "--ckpt_file", "models/model.pt", "--meta_file", "configs/metadata.json",
            "--config_file", "configs/inference.yaml",
        ],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip


def test_torchscript_export_matches_eager_model(meta: dict, tmp_path: Path) -> None:
    checkpoint = need(REPO / "models" / "model.pt")
    slice_120 = tifffile.imread(need(EPFL / "training.tif"), key=120)
    crop = normalize_slices(slice_120[None], EPFL / "training.tif")[(slice(None), *CROP)]  # as inference normalises
    image = torch.from_numpy(np.ascontiguousarray(crop))[None]  # (1, 1, 256, 256)
    result = export(tmp_path / "model.ts")
    assert result.returncode == 0, result.stderr[-3000:]
    scripted = torch.jit.load(str(tmp_path / "model.ts"), map_location="cpu").eval()
    eager = load_checkpoint(train_network(), checkpoint).eval()
    with torch.no_grad():
        expected, got = eager(image), scripted(image)
    assert got.shape == expected.shape == (1, 3, 256, 256)
    assert (expected[:, 1] > expected[:, 0]).any(), "crop without predicted mitochondria: pick another"
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    _, stored_meta, _ = load_net_with_metadata(str(tmp_path / "model.ts"))
    assert stored_meta["version"] == meta["version"]
    assert stored_meta["network_data_format"] == meta["network_data_format"]

"""Model Zoo release: metadata.json per the MONAI bundle spec, TorchScript export of models/model.pt."""

from __future__ import annotations

import json
import subprocess
import sys
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
from bundle.release import REQUIREMENTS, canonical, direct_requirements, locked_versions, metadata_versions
from tests.helpers import EPFL, REPO, need

META = REPO / "configs" / "metadata.json"
# mandatory keys of the MONAI bundle spec (the package versions come from the locks)
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


def test_metadata_versions_are_the_locks(meta: dict) -> None:
    """metadata.json's versions are what bundle.release derives from the committed locks (not what is installed)."""
    versions = metadata_versions()
    assert {key: meta.get(key) for key in versions} == versions, "run: bash scripts/lock.sh"
    assert versions["monai_version"] == "1.6.1" and versions["pytorch_version"] == "2.13.0"
    assert "mlflow" not in str(versions) and "pytest" not in str(versions)  # optional groups stay out
    assert "optional_packages_version" not in meta  # MONAI 1.6 would read it as required_packages_version


@pytest.mark.parametrize("group", ["runtime", "tracking", "cluster", "dev", "napari"])
def test_every_lock_pins_its_requirements_and_no_cuda_build(group: str) -> None:
    """Each lock pins every direct requirement of its .in file to a version that satisfies it, and holds no CUDA
    build (torch pinned to the release, no nvidia-* packages)."""
    from packaging.requirements import Requirement

    lock = REQUIREMENTS / f"{group}.txt"
    pins = locked_versions(lock)
    assert len(pins) >= 5, pins
    wanted = [line.split("#")[0].strip() for line in (REQUIREMENTS / f"{group}.in").read_text().splitlines()]
    for text in filter(None, (line for line in wanted if not line.startswith("-"))):
        requirement = Requirement(text)
        name = canonical(requirement.name)
        assert name in pins, f"{lock} does not pin {name}: run bash scripts/lock.sh"
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name])
    assert not [name for name in pins if name.startswith("nvidia-")]
    assert "+cpu" not in lock.read_text()


def test_locked_versions_and_direct_requirements_parse_pip_compile_output(tmp_path: Path) -> None:
    (tmp_path / "x.in").write_text("-c runtime.txt\nPyYAML>=6.0  # a comment\ntorch==2.13.0\n\n# only a comment\n")
    (tmp_path / "x.txt").write_text("#\npyyaml==6.0.4\n    # via -r x.in\ntorch==2.13.0+cpu\n")
    assert direct_requirements(tmp_path / "x.in") == ["pyyaml", "torch"]
    assert locked_versions(tmp_path / "x.txt") == {"pyyaml": "6.0.4", "torch": "2.13.0"}


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

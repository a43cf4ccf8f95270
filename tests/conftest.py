"""Shared fixtures: small crops of the real volumes (tests fail, never skip, without the data)."""

from __future__ import annotations

from pathlib import Path

import pytest
import tifffile

from bundle.data.io import read_volume
from tests.helpers import EPFL, VNC, need

CROP = (slice(128, 384), slice(128, 384))  # a window with several mitochondria in EPFL 120-121


@pytest.fixture(scope="session")
def real_crops(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """256x256 crops of two VNC III slices (source) and two EPFL slices 120-121 (validation), as TIFF volumes."""
    root = tmp_path_factory.mktemp("data")
    vnc_raw = read_volume(need(VNC / "raw"))[:2][(slice(None), *CROP)]
    vnc_mask = read_volume(need(VNC / "mitochondria"))[:2][(slice(None), *CROP)]
    epfl = tifffile.imread(need(EPFL / "training.tif"), key=[120, 121])[(slice(None), *CROP)]
    epfl_ids = tifffile.imread(need(EPFL / "training_instances.tif"), key=[120, 121])[(slice(None), *CROP)]
    paths = {name: root / f"{name}.tif" for name in ("src_image", "src_label", "val_image", "val_label")}
    for name, array in zip(paths, (vnc_raw, vnc_mask, epfl, epfl_ids)):
        tifffile.imwrite(paths[name], array, photometric="minisblack")
    assert epfl_ids.max() > 0 and (vnc_mask > 127).any()
    return {"root": root, **paths}

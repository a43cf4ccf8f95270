"""scripts/pseudo_label_quality.py: the --snap and --profile figures on hand-made slices."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np

from tests.helpers import EPFL, REPO, VNC, need

spec = importlib.util.spec_from_file_location("pseudo_label_quality", REPO / "scripts" / "pseudo_label_quality.py")
quality = importlib.util.module_from_spec(spec)
spec.loader.exec_module(quality)


def test_snap_quality_counts_the_cut_ring() -> None:
    yy, xx = np.mgrid[:64, :64]
    radius = np.hypot(yy - 32, xx - 32)
    image = np.where(radius <= 10, 0.5, 1.0)
    image[(radius > 8.5) & (radius <= 10)] = 0.0  # a dark membrane
    labels = np.where(radius <= 12.5, 1, 255).astype(np.uint8)  # 2-3 px too wide
    truth = (radius <= 10).astype(np.int32)
    figures = quality.snap_quality(labels[None], image[None], truth[None])
    snapped = quality.snap_to_membranes(labels, image)
    cut = (labels == 1) & (snapped == 0)
    assert figures["cut_to_bg_kpx"] == cut.sum() / 1e3 and cut[(radius > 10.5) & (radius <= 12.5)].all()
    assert figures["cut_truly_bg"] == (cut & (truth == 0)).sum() / cut.sum() > 0.85  # the ring outside the truth
    kept = snapped == 1
    assert figures["snapped_fg_precision"] == (kept & (truth > 0)).sum() / kept.sum() == 1.0
    assert figures["snapped_fg_recall"] == (kept & (truth > 0)).sum() / (truth > 0).sum()


def test_the_truth_profile_finds_a_membrane_drawn_one_pixel_inside_the_label() -> None:
    yy, xx = np.mgrid[:64, :64]
    radius = np.hypot(yy - 32, xx - 32)
    image = np.where(radius <= 12, 0.5, 1.0)
    image[(radius > 10.5) & (radius <= 11.5)] = 0.0  # the darkest ring: the outermost ring but one of the label
    truth = (radius <= 12.5).astype(np.int32)
    profile = quality.truth_profile(image[None], truth[None])
    assert min(profile, key=profile.get) == -1  # the labelled outline lies one pixel outside the ridge
    assert profile[-1] < profile[-6] and profile[-1] < profile[5]  # darker than the interior and the exterior


def test_snap_with_an_image_of_another_volume_is_one_line(tmp_path) -> None:
    (tmp_path / "pseudo_labels" / "round_1").mkdir(parents=True)
    image, label = str(need(VNC / "raw")), str(need(EPFL / "training_instances.tif"))
    script = "scripts/pseudo_label_quality.py"
    command = [sys.executable, script, str(tmp_path), "--snap", "--image", image, "--label", label]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mitoda: error: "), result.stderr
    assert "has shape (20, 1024, 1024)" in lines[0] and "pass the label volume that belongs to this image" in lines[0]
    assert result.stdout == ""  # nothing printed before the check

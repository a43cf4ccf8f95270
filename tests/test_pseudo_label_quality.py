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


def test_a_run_at_the_models_scale_is_scored_against_resampled_labels(tmp_path) -> None:
    import tifffile

    truth = np.zeros((2, 32, 32), np.uint16)
    truth[:, 8:16, 8:16] = 1  # one instance of 8x8 px per slice at 9.2 nm: 16x16 px at the model's 4.6 nm
    labels = np.zeros((2, 64, 64), np.uint8)
    labels[:, 16:32, 16:24] = 1  # the left half of it: precision 1, recall 0.5
    round_dir = tmp_path / "run" / "pseudo_labels" / "round_0"
    round_dir.mkdir(parents=True)
    tifffile.imwrite(round_dir / "labels.tif", labels)
    (round_dir / "pseudo_points.csv").write_text("z,y,x\n0,20,20\n1,50,50\n")
    tifffile.imwrite(tmp_path / "truth.tif", truth)
    script = [sys.executable, "scripts/pseudo_label_quality.py", str(tmp_path / "run"), "--label", str(tmp_path / "truth.tif")]
    result = subprocess.run([*script, "--slices", "0-1", "--pixel_size", "9.2"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    line = result.stdout.splitlines()[-1].split()
    figures = dict(zip(line[1::2], line[2::2]))
    assert figures["fg_precision"] == "1.000" and figures["fg_recall"] == "0.500" and figures["points_on_instances"] == "0.500"
    without = subprocess.run([*script, "--slices", "0-1"], cwd=REPO, capture_output=True, text=True)
    assert without.returncode != 0 and "(and --pixel_size)" in without.stderr.splitlines()[-1]
    missing = [*script[:3], "--label", str(tmp_path / "absent.tif"), "--pixel_size", "-3"]  # a bad size, checked first
    bad = subprocess.run(missing, cwd=REPO, capture_output=True, text=True)
    assert bad.returncode != 0 and "is not a pixel size" in bad.stderr.splitlines()[-1] and bad.stdout == ""

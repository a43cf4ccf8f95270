"""Tests for bundle.pseudo_labels.suggest, scripts/suggest_clicks.py and measure_suggestions.py's simulated user."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from bundle.data.density import density_map, instance_centres
from bundle.data.points import read_points, write_points
from bundle.pseudo_labels import Suggestion, rank_suggestions, slice_candidates, suggestion_points
from tests.helpers import EPFL, REPO, need

sys.path.insert(0, str(REPO / "scripts"))
from measure_suggestions import random_clicks, simulated_user  # noqa: E402

SHAPE = (128, 320)


def _disc(centre: tuple[int, int], radius: float, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """Bool disc of `radius` around (y, x)."""
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """Probability and density of a clean disc (one centre), an elongated blob with two centres, a missed peak."""
    probability = np.full(SHAPE, 0.02)
    probability[_disc((64, 50), 16)] = 0.97  # clean: one centre
    probability[44:84, 120:210] = 0.97  # two mitochondria merged into one component
    density = density_map(np.array([[64, 50], [64, 140], [64, 190], [64, 280]]), SHAPE, 11.0)  # (64, 280): no component
    return probability, density


def _by_place(candidates: list[Suggestion]) -> dict[tuple[int, int], Suggestion]:
    """Candidates keyed by (y, x)."""
    return {(c.y, c.x): c for c in candidates}


# ----------------------------------------------------------------------------------------------------------- scores
def test_two_centres_rank_above_a_clean_component_and_peak_is_suggested() -> None:
    """The merged component (mass ≈ 2) and the missed peak rank above the clean disc (mass ≈ 1, high margin)."""
    probability, density = _scene()
    candidates = slice_candidates(probability, density, z=3)
    assert len(candidates) == 3 and all(c.z == 3 for c in candidates)
    kinds = sorted(c.kind for c in candidates)
    assert kinds == ["component", "component", "peak"]
    clean = _by_place(candidates)[(64, 50)]
    merged = next(c for c in candidates if c.kind == "component" and c is not clean)
    peak = next(c for c in candidates if c.kind == "peak")
    assert (peak.y, peak.x) == (64, 280) and peak.mass == pytest.approx(1.0, abs=0.02)
    assert clean.mass == pytest.approx(1.0, abs=0.05) and merged.mass == pytest.approx(2.0, abs=0.1)
    assert clean.margin == pytest.approx(0.94) and clean.score < 0.2
    assert merged.score > clean.score + 0.8 and peak.score > clean.score + 0.8
    top = rank_suggestions(candidates, 2)
    assert clean not in top and {c.kind for c in top} == {"component", "peak"}
    labels = np.zeros(SHAPE, np.int32)
    labels[44:84, 120:210] = 1
    assert (merged.y, merged.x) == tuple(instance_centres(labels)[0])  # a component's distance-transform maximum


def test_clicked_component_and_peak_are_never_suggested() -> None:
    """A component holding a clicked point, and a peak with a click nearby, are left out whatever their score."""
    probability, density = _scene()
    clicked = np.array([[50, 125], [70, 275]])  # inside the merged blob (not at its centre); 11 px from the peak
    candidates = slice_candidates(probability, density, clicked)
    assert [(c.y, c.x, c.kind) for c in candidates] == [(64, 50, "component")]
    assert rank_suggestions(candidates, 5) == candidates


def test_speck_without_detection_is_not_a_candidate() -> None:
    """A small unsure blob the density head gives < min_mass instance (mostly background noise) is left out."""
    probability, density = _scene()
    probability[_disc((20, 280), 4)] = 0.55
    assert (20, 280) not in _by_place(slice_candidates(probability, density))
    assert (20, 280) in _by_place(slice_candidates(probability, density, min_mass=0.0))


def test_margin_orders_equal_detection() -> None:
    """Two discs with one clean centre each: the one whose probability is near 0.5 ranks first."""
    probability = np.full(SHAPE, 0.02)
    probability[_disc((64, 60), 16)] = 0.98
    probability[_disc((64, 200), 16)] = 0.6
    density = density_map(np.array([[64, 60], [64, 200]]), SHAPE, 11.0)
    sure, unsure = sorted(slice_candidates(probability, density), key=lambda c: c.x)
    assert sure.margin == pytest.approx(0.96) and unsure.margin == pytest.approx(0.2)
    assert unsure.score == pytest.approx(sure.score + 0.76, abs=0.02)
    assert rank_suggestions([sure, unsure], 1) == [unsure]


def test_rank_spreads_over_slices_and_caps() -> None:
    """Default: ceil(k / slices) per slice first, then the best of the rest; --per-slice is a hard cap."""
    made = [Suggestion(z, y, 0, score, 0.5, 1.0, "component", 10) for z, y, score in
            [(0, 1, 1.9), (0, 2, 1.8), (0, 3, 1.7), (1, 1, 0.5), (2, 1, 0.1)]]  # fmt: skip
    assert [(c.z, c.y) for c in rank_suggestions(made, 3)] == [(0, 1), (1, 1), (2, 1)]
    assert [(c.z, c.y) for c in rank_suggestions(made, 4)] == [(0, 1), (0, 2), (1, 1), (2, 1)]
    assert [(c.z, c.y) for c in rank_suggestions(made, 5, per_slice=1)] == [(0, 1), (1, 1), (2, 1)]
    assert suggestion_points(rank_suggestions(made, 2)).tolist() == [[0, 1, 0], [1, 1, 0]]


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: slice_candidates(np.zeros((4, 4)), np.zeros((4, 5))), "same shape"),
        (lambda: slice_candidates(np.zeros((2, 4, 4)), np.zeros((2, 4, 4))), "2D slice"),
        (lambda: slice_candidates(np.full((4, 4), np.nan), np.zeros((4, 4))), "finite"),
        (lambda: slice_candidates(np.full((4, 4), 2.0), np.zeros((4, 4))), "[0, 1]"),
        (lambda: slice_candidates(np.zeros((4, 4)), np.zeros((4, 4)), np.array([[9, 0]])), "outside"),
        (lambda: rank_suggestions([], 0), "k must be"),
        (lambda: rank_suggestions([], 3, per_slice=0), "per_slice"),
    ],
)
def test_bad_arguments_are_one_line_errors(call, words: str) -> None:
    """Wrong shapes, NaN, probabilities outside [0, 1], points off the slice, k < 1: one-line ValueErrors."""
    with pytest.raises(ValueError) as info:
        call()
    assert words in str(info.value) and "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------------------------- CLI
def test_napari_csv_round_trip(tmp_path: Path) -> None:
    """Suggestions written as a napari Points CSV read back to the same (z, y, x) with the repo's reader."""
    points = suggestion_points(rank_suggestions(slice_candidates(*_scene(), z=7), 3))
    write_points(tmp_path / "s.csv", points, napari=True)
    assert (tmp_path / "s.csv").read_text().splitlines()[0] == "index,axis-0,axis-1,axis-2"
    np.testing.assert_array_equal(read_points(tmp_path / "s.csv"), points)


def _cli(*args: str) -> subprocess.CompletedProcess:
    """Run scripts/suggest_clicks.py from the repository root."""
    command = [sys.executable, "scripts/suggest_clicks.py", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def small_volume(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Three 256x384 crops of EPFL slices 0-2 as a TIFF, and a points CSV with one click on slice 2."""
    folder = tmp_path_factory.mktemp("suggest")
    with tifffile.TiffFile(need(EPFL / "training.tif")) as tif:
        volume = np.stack([tif.pages[z].asarray()[256:512, 256:640] for z in range(3)])
    tifffile.imwrite(folder / "crop.tif", volume, photometric="minisblack")
    write_points(folder / "clicked.csv", np.array([[2, 100, 100]]))
    return folder / "crop.tif", folder / "clicked.csv"


def test_cli_writes_napari_points_on_the_chosen_slices(small_volume: tuple[Path, Path], tmp_path: Path) -> None:
    """The model runs on slices 0 and 2 ('0-2:2'); the CSV is napari-readable, z are indices of the volume."""
    image, clicked = small_volume
    result = _cli("--image", str(image), "--points", str(clicked), "--slices", "0-2:2", "--k", "4",
                  "--output", str(tmp_path / "next.csv"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    points = read_points(tmp_path / "next.csv")
    assert 1 <= len(points) <= 4 and set(points[:, 0].tolist()) <= {0, 2}
    assert (tmp_path / "next.csv").read_text().startswith("index,axis-0,axis-1,axis-2")
    assert f"wrote {len(points)} suggestions" in result.stdout


@pytest.mark.parametrize(
    "change, words",
    [
        ({"--points": "missing.csv"}, "does not exist"),
        ({"--k": "0"}, "--k 0"),
        ({"--slices": "0-2:0"}, "cannot parse slice spec"),
        ({"--slices": "0-9"}, "selects slice 3"),
        ({"--checkpoint": "README.md"}, "not a PyTorch checkpoint"),
        ({"--format": "xml"}, "invalid choice"),
    ],
)
def test_cli_bad_input_one_line_no_output(small_volume: tuple[Path, Path], tmp_path: Path, change: dict, words: str):
    """Bad input: exit 2, one line 'mitoda: error: ...' naming the problem, and no output file."""
    image, clicked = small_volume
    options = {"--image": str(image), "--points": str(clicked), "--k": "3", "--output": str(tmp_path / "out.csv")}
    options.update(change)
    result = _cli(*[item for pair in options.items() for item in pair])
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mitoda: error:") and words in lines[0], result.stderr
    assert not (tmp_path / "out.csv").exists()


def test_cli_point_outside_volume(small_volume: tuple[Path, Path], tmp_path: Path) -> None:
    """Clicks of another volume (outside this one) are refused before the model runs."""
    image, _ = small_volume
    write_points(tmp_path / "far.csv", np.array([[0, 700, 10]]))
    result = _cli("--image", str(image), "--points", str(tmp_path / "far.csv"), "--output", str(tmp_path / "o.csv"))
    assert result.returncode == 2 and "outside the volume" in result.stderr and not (tmp_path / "o.csv").exists()


# ----------------------------------------------------------------------------------------------------------- user
def test_simulated_user_clicks_unclicked_instances_at_their_centres() -> None:
    """On an unclicked true instance: a click at its centre; on background or a clicked instance: wasted."""
    labels = np.zeros((40, 60), np.uint16)
    labels[5:16, 5:16], labels[20:31, 30:41] = 1, 2
    truth = {3: labels}
    suggestions = np.array([[3, 6, 6], [3, 7, 7], [3, 35, 35], [3, 0, 59]])  # id 1 twice, id 2 already clicked, bg
    added, wasted = simulated_user(suggestions, truth, clicked={(3, 2)})
    assert added.tolist() == [[3, 10, 10]] and wasted == 3
    chosen = random_clicks(truth, {(3, 2)}, 1, seed=0)
    assert chosen.tolist() == [[3, 10, 10]]
    two = {3: labels, 6: labels}
    np.testing.assert_array_equal(random_clicks(two, set(), 3, seed=5), random_clicks(two, set(), 3, seed=5))

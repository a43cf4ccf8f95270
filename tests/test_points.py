"""Tests for bundle.data.points and scripts/simulate_points.py: hand-made cases plus the published EPFL point files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bundle.data.density import instance_centres
from bundle.data.io import read_instances, write_tiff
from bundle.data.points import (
    density_from_points,
    points_in_slices,
    points_on_slice,
    read_points,
    simulate_points,
    validate_points,
    write_points,
)
from bundle.errors import InputError
from tests.helpers import EPFL, REPO, need, raises_one_line

EPFL_SHAPE = (165, 768, 1024)
POINT_FILES = ["15pct_split1", "15pct_split2", "15pct_split3", "15pct_split4", "15pct_split5", "5pct", "30pct", "50pct"]


# ----------------------------------------------------------------------------------------------------------- fixtures
def _squares() -> tuple[np.ndarray, dict[tuple[int, int], tuple[int, int]]]:
    """A 2-slice volume of odd squares (unique distance-transform maxima) with per-slice ids, and their centres."""
    vol = np.zeros((2, 40, 60), dtype=np.uint16)
    centres = {}
    layout = {
        0: [(1, 2, 3, 11), (2, 20, 5, 9), (3, 5, 30, 7)],  # (id, top, left, side); slice 0: 3 instances
        1: [(1, 0, 0, 5), (2, 10, 10, 13), (3, 30, 40, 9), (4, 2, 45, 11), (5, 28, 2, 3)],  # slice 1: 5 instances
    }
    for z, squares in layout.items():
        for label_id, top, left, side in squares:
            vol[z, top : top + side, left : left + side] = label_id
            centres[(z, label_id)] = (top + side // 2, left + side // 2)
    return vol, centres


def _shapes() -> np.ndarray:
    """A 2-slice volume with large, small, non-convex, border-touching and single-pixel instances (per-slice ids)."""
    vol = np.zeros((2, 48, 64), dtype=np.uint16)
    vol[0, 2:30, 2:30] = 1  # large square
    vol[0, 34:48, 10:14] = 2  # thin bar touching the bottom border
    vol[0, 5:40, 40:44] = 3  # L shape ...
    vol[0, 36:40, 40:62] = 3
    vol[0, 45, 60] = 4  # single pixel: can never move
    vol[1, 10:20, 10:50] = 1  # wide rectangle
    vol[1, 25:45, 5:25] = 2
    vol[1, 25:45, 12:18] = 0  # ... split in two parts: one id, two components
    vol[1, 30:34, 40:44] = 3
    return vol


@pytest.fixture(scope="module")
def epfl_instances() -> np.ndarray:
    """The EPFL training instance volume (ids per slice)."""
    return read_instances(need(EPFL / "training_instances.tif"))


# ----------------------------------------------------------------------------------------------------------- read/write
def _points() -> np.ndarray:
    """Synthetic points, including large and zero coordinates."""
    return np.array([[0, 0, 0], [3, 17, 233], [164, 767, 1023], [2, 5, 123456]], dtype=np.int64)


@pytest.mark.parametrize("napari", [False, True])
def test_round_trip_is_exact(tmp_path: Path, napari: bool) -> None:
    """Writing and reading back gives the same int64 array, in both formats."""
    path = tmp_path / "points.csv"
    write_points(path, _points(), napari=napari)
    back = read_points(path)
    assert back.dtype == np.int64
    np.testing.assert_array_equal(back, _points())
    header = path.read_text().splitlines()[0]
    assert header == ("index,axis-0,axis-1,axis-2" if napari else "z,y,x")
    assert not [p for p in tmp_path.iterdir() if p.name != "points.csv"]  # no temp file left behind


def test_columns_in_any_order_and_napari_rounding(tmp_path: Path) -> None:
    """Our columns are taken by name; napari floats are rounded with np.rint (3.6 -> 4)."""
    ours = tmp_path / "ours.csv"
    ours.write_text("x,z,y\n5,1,7\n6,2,8\n")
    np.testing.assert_array_equal(read_points(ours), [[1, 7, 5], [2, 8, 6]])
    napari = tmp_path / "napari.csv"
    napari.write_text("index,axis-0,axis-1,axis-2\n0,3.6,10.2,4.49\n1,0.0,1.5,2.5\n")
    np.testing.assert_array_equal(read_points(napari), [[4, 10, 4], [0, 2, 2]])


@pytest.mark.parametrize(
    "text, words",
    [
        ("", "no points"),
        ("z,y,x\n", "no points"),
        ("\n\n", "no points"),
        ("a,b,c\n1,2,3\n", "unknown columns 'a,b,c'"),
        ("z,y,x,label\n1,2,3,4\n", "expected 'z,y,x'"),
        ("z,y,x\n1,2,3\n4,nan,6\n", "data row 2"),
        ("z,y,x\n1,2,3\n4,5,six\n", "non-numeric value 'six'"),
        ("z,y,x\n1,2\n", "has 2 values"),
        ("index,axis-0,axis-1\n0,1.0,2.0\n", "2D points for a 3D volume"),
    ],
)
def test_read_errors_are_one_line(tmp_path: Path, text: str, words: str) -> None:
    """Every bad points file raises a one-line InputError naming the file and the problem."""
    path = tmp_path / "bad_points.csv"
    path.write_text(text)
    msg = raises_one_line(read_points, path, name="bad_points.csv")
    assert words in msg, msg


def test_read_missing_and_binary_files(tmp_path: Path) -> None:
    """A missing file, a folder and a binary file are one-line InputErrors."""
    raises_one_line(read_points, tmp_path / "missing.csv", name="missing.csv")
    raises_one_line(read_points, tmp_path, name=tmp_path.name)
    tif = tmp_path / "volume.tif"
    write_tiff(tif, np.arange(64, dtype=np.uint16).reshape(1, 8, 8) * 997)
    raises_one_line(read_points, tif, name="volume.tif")


def test_wrong_columns_say_what_was_found_and_expected(tmp_path: Path) -> None:
    """The unknown-columns message lists the header found and both accepted headers."""
    path = tmp_path / "cols.csv"
    path.write_text("Z,row,col\n1,2,3\n")
    msg = raises_one_line(read_points, path, name="cols.csv")
    assert "z,row,col" in msg and "z,y,x" in msg and "index,axis-0,axis-1,axis-2" in msg, msg


def test_write_rejects_bad_arrays(tmp_path: Path) -> None:
    """write_points refuses empty, 2-column and fractional arrays and leaves no file."""
    for bad in (np.zeros((0, 3)), np.zeros((4, 2)), np.array([[0.5, 1, 2]])):
        with pytest.raises(ValueError):
            write_points(tmp_path / "p.csv", bad)
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------------------- validate
@pytest.mark.parametrize("point, words", [((165, 3, 4), "z=165"), ((5, -1, 4), "y=-1")])
def test_point_outside_volume(point: tuple[int, int, int], words: str) -> None:
    """A point outside the volume is a one-line InputError naming the file, the point, its row and the shape."""
    points = np.array([[0, 0, 0], [1, 2, 3], point], dtype=np.int64)
    msg = raises_one_line(validate_points, points, EPFL_SHAPE, path="my_points.csv", name="my_points.csv")
    assert words in msg and "data row 3" in msg and str(EPFL_SHAPE) in msg and "another volume" in msg, msg


def test_validate_reports_background_points() -> None:
    """Points on background are counted and kept, not an error."""
    vol, centres = _squares()
    points = np.array([[0, *centres[(0, 1)]], [1, 39, 59], [1, *centres[(1, 2)]], [0, 0, 0]], dtype=np.int64)
    report = validate_points(points, vol.shape, path="p.csv", instances=vol)
    assert report == {"num_points": 4, "off_object": 2, "off_object_rows": [1, 3]}
    assert validate_points(points, vol.shape) == {"num_points": 4, "off_object": 0, "off_object_rows": []}
    with pytest.raises(InputError):
        validate_points(points, vol.shape, instances=vol[:1])


# ----------------------------------------------------------------------------------------------------------- slices
def test_points_in_slices_and_on_slice() -> None:
    """Points of the chosen slices keep their order, with z re-indexed to the position in `slices`."""
    points = np.array([[0, 1, 1], [5, 2, 2], [2, 3, 3], [5, 4, 4], [9, 5, 5]], dtype=np.int64)
    np.testing.assert_array_equal(points_in_slices(points, [5, 2]), [[0, 2, 2], [1, 3, 3], [0, 4, 4]])
    np.testing.assert_array_equal(points_in_slices(points, range(3)), [[0, 1, 1], [2, 3, 3]])
    assert points_in_slices(points, [100]).shape == (0, 3)
    np.testing.assert_array_equal(points_on_slice(points, 5), [[2, 2], [4, 4]])
    assert points_on_slice(points, 7).shape == (0, 2)


# ----------------------------------------------------------------------------------------------------------- simulate
def test_simulate_all_points_are_distance_transform_maxima() -> None:
    """Fraction 1.0 clicks every instance of every slice exactly at its distance-transform maximum."""
    vol, centres = _squares()
    points = simulate_points(vol, 1.0, seed=3)
    expected = sorted((z, y, x) for (z, _), (y, x) in centres.items())
    assert sorted(map(tuple, points.tolist())) == expected
    for z in range(vol.shape[0]):  # the same as instance_centres on the whole slice
        assert sorted(map(tuple, points_on_slice(points, z).tolist())) == sorted(
            map(tuple, instance_centres(vol[z].astype(np.int32)).tolist())
        )


def test_simulate_counts_follow_np_round() -> None:
    """np.round per slice (halves to even): 3 -> round(1.5) = 2, 5 -> round(2.5) = 2, 3 at 15 % -> 0."""
    vol, _ = _squares()
    counts = lambda pts: np.bincount(pts[:, 0], minlength=2).tolist()  # noqa: E731
    assert counts(simulate_points(vol, 0.5, seed=0)) == [2, 2]
    assert counts(simulate_points(vol, 0.15, seed=0)) == [0, 1]  # 0.45 -> 0, 0.75 -> 1
    assert counts(simulate_points(vol, 0.15, seed=0, min_per_slice=1)) == [1, 1]
    assert counts(simulate_points(vol, 0.0, seed=0, min_per_slice=4)) == [3, 4]  # never more than the slice has
    assert counts(simulate_points(vol, 0.0)) == [0, 0]


def test_simulate_is_reproducible() -> None:
    """The same seed gives the same points; another seed gives other points."""
    vol, centres = _squares()
    a = simulate_points(vol, 0.5, seed=7)
    np.testing.assert_array_equal(a, simulate_points(vol, 0.5, seed=7))
    assert any(not np.array_equal(a, simulate_points(vol, 0.5, seed=s)) for s in range(8, 12))
    assert set(map(tuple, a.tolist())) <= {(z, y, x) for (z, _), (y, x) in centres.items()}
    np.testing.assert_array_equal(
        simulate_points(vol, 1.0, seed=1, displacement=3), simulate_points(vol, 1.0, seed=1, displacement=3)
    )


def test_simulate_rejects_bad_arguments() -> None:
    """fraction outside [0, 1], negative displacement or min_per_slice are ValueErrors."""
    vol, _ = _squares()
    for kwargs in ({"fraction": 1.5}, {"fraction": -0.1}, {"fraction": 0.5, "displacement": -1}):
        with pytest.raises(ValueError):
            simulate_points(vol, **kwargs)
    with pytest.raises(ValueError):
        simulate_points(vol, 0.5, min_per_slice=-1)


@pytest.mark.parametrize("distance", [2.0, 5.0, 40.0])
def test_displacement_stays_in_own_instance(distance: float) -> None:
    """Displaced points stay inside their own instance, at most `distance` from its centre (many seeds)."""
    vol = _shapes()
    moved = 0
    for seed in range(40):
        points = simulate_points(vol, 1.0, seed=seed, displacement=distance)
        assert len(points) == 7
        for z in range(vol.shape[0]):
            ids = [int(i) for i in np.unique(vol[z]) if i]
            on_slice = points_on_slice(points, z)
            hit = sorted(int(vol[z, y, x]) for y, x in on_slice)
            assert hit == ids  # every instance exactly once, each point inside an instance
            for y, x in on_slice:
                label_id = int(vol[z, y, x])
                centre = instance_centres(np.where(vol[z] == label_id, 1, 0))[0]
                offset = float(np.hypot(y - centre[0], x - centre[1]))
                assert offset <= distance + 1e-9
                moved += offset > 0
                if label_id == 4 and z == 0:
                    assert offset == 0  # a single pixel has nowhere to go
    assert moved > 40 * 5  # most points do move


# ----------------------------------------------------------------------------------------------------------- density
def test_density_mass_per_slice_is_point_count() -> None:
    """Each slice of the density sums to the number of points on it; empty slices are zero."""
    points = np.array([[0, 5, 5], [0, 20, 30], [0, 0, 0], [2, 31, 31], [3, 16, 16]], dtype=np.int64)
    density = density_from_points(points, (5, 32, 40), sigma=3.0)
    assert density.dtype == np.float32 and density.shape == (5, 32, 40)
    np.testing.assert_allclose(density.sum(axis=(1, 2)), [3, 0, 1, 1, 0], rtol=1e-4, atol=1e-5)
    assert density[3, 16, 16] == density[3].max()
    with pytest.raises(InputError):
        density_from_points(points, (3, 32, 40), sigma=3.0)


# ----------------------------------------------------------------------------------------------------------- real data
@pytest.mark.parametrize("name", POINT_FILES)
def test_published_points_read_and_validate(name: str, epfl_instances: np.ndarray) -> None:
    """Every published EPFL point file reads, fits the (165, 768, 1024) volume and is < 3 % off objects."""
    path = need(EPFL / "points" / f"{name}.csv")
    points = read_points(path)
    assert len(points) > 100
    report = validate_points(points, EPFL_SHAPE, path=str(path), instances=epfl_instances)
    assert report["num_points"] == len(points)
    assert report["off_object"] / len(points) < 0.03, report


def test_split1_holds_about_15_percent(epfl_instances: np.ndarray) -> None:
    """15pct_split1 has 10-20 % as many points as there are (slice, id) instances; slices 0-119 keep z < 120."""
    points = read_points(need(EPFL / "points" / "15pct_split1.csv"))
    instances = sum(int(np.count_nonzero(np.unique(labels))) for labels in epfl_instances)
    assert 0.10 <= len(points) / instances <= 0.20, (len(points), instances)
    train = points_in_slices(points, list(range(120)))
    assert 0 < len(train) < len(points)
    assert train[:, 0].max() < 120
    assert len(train) == int(np.count_nonzero(points[:, 0] < 120))


# ----------------------------------------------------------------------------------------------------------- script
def _script(*args: str) -> subprocess.CompletedProcess:
    """Run scripts/simulate_points.py from the repo root."""
    return subprocess.run(
        [sys.executable, "scripts/simulate_points.py", *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )


def test_script_writes_points(tmp_path: Path) -> None:
    """The script writes a CSV that reads back to simulate_points' result (z in full-volume indices)."""
    vol, _ = _squares()
    write_tiff(tmp_path / "inst.tif", vol)
    out = tmp_path / "sub" / "points.csv"
    result = _script(
        "--instances", str(tmp_path / "inst.tif"), "--fraction", "1.0", "--seed", "1", "--slices", "1",
        "--displacement", "2", "--napari", "--output", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "wrote 5 points for 5 instances" in result.stdout
    points = read_points(out)
    expected = simulate_points(vol[1:], 1.0, seed=1, displacement=2)
    expected[:, 0] = 1
    np.testing.assert_array_equal(points, expected)
    assert out.read_text().startswith("index,axis-0,axis-1,axis-2\n")


def test_script_bad_input_exits_2(tmp_path: Path) -> None:
    """A missing instance file exits 2 with one 'mitoda: error:' line naming it, and writes nothing."""
    out = tmp_path / "points.csv"
    result = _script("--instances", str(tmp_path / "nope.tif"), "--fraction", "0.15", "--output", str(out))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mitoda: error:") and "nope.tif" in lines[0], result.stderr
    assert not out.exists()
    result = _script("--instances", str(tmp_path / "nope.tif"), "--fraction", "2", "--output", str(out))
    assert result.returncode == 2 and result.stderr.startswith("mitoda: error: --fraction 2.0")
    assert not out.exists()

"""3D instances across slices (blockwise equal to whole-volume labelling), their table, 3D instance AP (AP50/AP75),
bad input, and a real EPFL crop."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile
from monai.bundle import ConfigParser
from scipy import ndimage as ndi
from skimage.measure import regionprops_table

from bundle.data.io import SliceVolume, read_volume
from bundle.inference import instance_table, instances_3d, label_instances, write_instance_table, write_instances_3d
from bundle.inference.instances3d import TABLE_COLUMNS, BlockComponents, InstanceTable
from bundle.metrics.instance_ap import ap_from_matches, gt_instances_3d, instance_ap
from tests.helpers import EPFL, REPO, need, raises_one_line


def test_blobs_touching_in_2d_but_apart_in_z_are_two_instances() -> None:
    probability = np.zeros((5, 20, 20), np.float32)
    probability[0:2, 5:15, 5:15] = 1.0  # same (y, x) footprint ...
    probability[3:5, 5:15, 5:15] = 1.0  # ... but an empty slice between them
    labels = instances_3d(probability)
    assert labels.dtype == np.int32 and labels.max() == 2
    assert labels[0, 10, 10] != labels[4, 10, 10]


def test_tube_across_five_slices_is_one_instance() -> None:
    probability = np.zeros((7, 16, 16), np.float32)
    probability[1:6, 4:8, 4:8] = 0.9
    probability[3, 0, 0] = 0.9  # a one-voxel speck is dropped by min_size
    labels = instances_3d(probability, min_size=16)
    assert np.unique(labels).tolist() == [0, 1] and (labels == 1).sum() == 5 * 16


def test_watershed_splits_touching_balls_at_3d_density_peaks() -> None:
    zz, yy, xx = np.mgrid[:20, :20, :36]
    centres = [(10, 10, 11), (10, 10, 24)]
    probability = np.zeros((20, 20, 36), np.float32)
    density = np.zeros_like(probability)
    for cz, cy, cx in centres:
        r2 = (zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2
        probability[r2 <= 49] = 1.0
        density += np.exp(-r2 / 18.0).astype(np.float32)
    assert instances_3d(probability).max() == 1  # one blob as components
    labels = instances_3d(probability, density, method="watershed", peak_min_distance=5, peak_threshold=0.1)
    assert labels.max() == 2 and labels[10, 10, 11] != labels[10, 10, 24]
    assert ((labels > 0) == (probability >= 0.5)).all()


def test_table_columns_and_one_row(tmp_path) -> None:
    labels = np.zeros((7, 10, 12), np.int32)
    labels[1:6, 2:4, 3:6] = 4
    labels[0, 0, 0] = 9
    path = write_instance_table(tmp_path / "t.csv", instance_table(labels))
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == ["id", "volume", "z0", "y0", "x0", "z1", "y1", "x1", "centroid_z", "centroid_y", "centroid_x"]
    assert [r["id"] for r in rows] == ["4", "9"]
    assert rows[0] == {"id": "4", "volume": "30", "z0": "1", "y0": "2", "x0": "3", "z1": "6", "y1": "4", "x1": "6",
                       "centroid_z": "3.000", "centroid_y": "2.500", "centroid_x": "4.000"}  # fmt: skip


BLOCK_SIZES = (1, 2, 3, 4, 5, 7, 16, 1000)  # 1000: one block larger than the volume


def _crossing_objects() -> np.ndarray:
    """A (12, 20, 24) probability whose objects cross the faces between blocks of every size in BLOCK_SIZES."""
    probability = np.zeros((12, 20, 24), np.float32)
    probability[0:10, 1:3, 1:3] = 0.9  # a U: two arms down z from slice 0 ...
    probability[0:10, 1:3, 8:10] = 0.9
    probability[9, 1:3, 1:10] = 0.9  # ... joined only by a bar in slice 9
    probability[0:5, 5:8, 1:5] = 0.8  # a box ending in slice 4 ...
    probability[5:10, 8:11, 5:9] = 0.8  # ... and one from slice 5 that touches it only at a corner (z, y, x diagonal)
    probability[2:6, 13:15, 1:5] = 0.7  # a bar, and one below it shifted by one row: an edge contact (z, y diagonal)
    probability[6:10, 15:17, 1:5] = 0.7
    probability[2:12, 18, 20] = 0.6  # a 10-voxel tube: under min_size 16 however it is split
    probability[2:12, 18, 22:24] = 0.6  # a 20-voxel tube: kept, though each block holds fewer than 16 of its voxels
    probability[11, 5:9, 12:16] = 0.4  # under the threshold
    return probability


def _smooth_noise(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """Smoothed noise scaled to 0..1: many blobs of every shape, many of them across block faces."""
    noise = ndi.gaussian_filter(np.random.default_rng(seed).random(shape, dtype=np.float32), 1.5)
    return (noise - noise.min()) / np.ptp(noise)


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two label volumes hold the same objects, whatever their ids (a bijection between the ids)."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return pairs.shape[1] == np.unique(a[a > 0]).size == np.unique(b[b > 0]).size


def test_blockwise_components_equal_labelling_the_whole_volume() -> None:
    probability = _crossing_objects()
    whole = label_instances(probability, threshold=0.5, min_size=16)  # the whole volume labelled at once
    assert whole.max() == 6  # the U, two boxes, two bars, the 20-voxel tube
    assert whole[0, 1, 1] == whole[0, 1, 8] and whole[4, 6, 2] != whole[5, 9, 6] and whole[5, 13, 1] != whole[6, 15, 1]
    assert whole[2, 18, 20] == 0 and whole[2, 18, 22] > 0
    assert not _same_partition(whole, np.where(whole == 2, 1, whole))  # the check can fail
    # smoothed noise: 31 and 11 blobs of every shape, most across block faces, and 151 and 55 voxels under min_size
    volumes = [(probability, 0.5), (_smooth_noise((23, 30, 40), 0), 0.55), (_smooth_noise((9, 25, 25), 1), 0.65)]
    for volume, threshold in volumes:
        whole = label_instances(volume, threshold=threshold, min_size=16)
        for block_slices in BLOCK_SIZES:
            blockwise = instances_3d(volume, threshold=threshold, min_size=16, block_slices=block_slices)
            assert _same_partition(blockwise, whole), block_slices
            assert np.array_equal(blockwise, whole), block_slices  # the same ids too: numbered in raster order


def test_merged_size_decides_min_size() -> None:
    probability = np.zeros((12, 4, 4), np.float32)
    probability[:, 1, 1] = 1.0  # 12 voxels in a tube across every block face
    probability[:, 1, 3] = 1.0  # and a tube of 12 that joins it in slice 6: 25 in all
    probability[6, 1, 2] = 1.0
    components = BlockComponents(probability, min_size=13, block_slices=4)
    assert components.count == 1
    assert BlockComponents(probability[:6], min_size=13, block_slices=4).count == 0  # two tubes of 6: dropped


def test_block_table_equals_whole_volume_table() -> None:
    instances = label_instances(_smooth_noise((23, 30, 40), 0), threshold=0.55, min_size=4)
    props = regionprops_table(instances, properties=("label", "area", "bbox", "centroid"))  # the table of old
    names = ("label", "area", *(f"bbox-{i}" for i in range(6)), *(f"centroid-{i}" for i in range(3)))
    for block_slices in BLOCK_SIZES:
        table = InstanceTable(int(instances.max()), voxel_size=(40.0, 5.0, 5.0))
        for start in range(0, len(instances), block_slices):
            block = instances[start : start + block_slices]
            local, ids = np.unique(block, return_inverse=True)  # other labels, several labels per id allowed
            table.add(ids.reshape(block.shape).astype(np.int32), start, local)
        got = table.table()
        for column, name in zip(TABLE_COLUMNS, names):
            if column.startswith("centroid"):
                np.testing.assert_allclose(got[column], props[name], rtol=0, atol=1e-9, err_msg=column)
            else:
                assert np.array_equal(got[column], props[name]), (column, block_slices)
        np.testing.assert_allclose(got["volume_um3"], props["area"] * 40 * 5 * 5 * 1e-9)


def _write_probability(folder, probability: np.ndarray) -> None:
    """probability.tif as VolumePredictor writes it: plain float32 pages."""
    with tifffile.TiffWriter(folder / "probability.tif") as writer:
        for page in probability:
            writer.write(page, photometric="minisblack", metadata=None)


def test_write_instances_3d_reads_one_block_at_a_time(tmp_path, monkeypatch) -> None:
    probability = _crossing_objects()
    _write_probability(tmp_path, probability)
    asked = []  # slices per read of a prediction file
    read, getitem = SliceVolume.read, SliceVolume.__getitem__

    def counted_read(volume: SliceVolume, z: slice = slice(None), *rest: slice) -> np.ndarray:
        asked.append(len(range(*z.indices(len(volume)))))
        return read(volume, z, *rest)

    def counted_getitem(volume: SliceVolume, z: int) -> np.ndarray:
        asked.append(1)
        return getitem(volume, z)

    monkeypatch.setattr(SliceVolume, "read", counted_read)
    monkeypatch.setattr(SliceVolume, "__getitem__", counted_getitem)
    for block_slices in (1, 4, 5):
        asked.clear()
        finals = write_instances_3d(tmp_path, block_slices=block_slices)
        assert asked and max(asked) <= block_slices  # never more than one block of probability at a time
        assert sum(asked) == 2 * len(probability)  # two passes
        written = tifffile.imread(finals["instances_3d.tif"])
        assert written.dtype == np.uint32 and np.array_equal(written, label_instances(probability, min_size=16))
        rows = list(csv.DictReader(finals["instances_3d.csv"].open()))
        expected = instance_table(written.astype(np.int32))
        assert list(rows[0]) == list(TABLE_COLUMNS)  # no volume_um3 without a voxel size
        for column in TABLE_COLUMNS:
            assert [float(row[column]) for row in rows] == pytest.approx(expected[column].tolist(), abs=5e-4), column
    asked.clear()
    instances_3d(read_volume(tmp_path / "probability.tif"))
    assert asked == [len(probability)]  # the counting sees a whole read


def test_volume_in_um3_with_a_known_voxel_size(tmp_path) -> None:
    probability = _crossing_objects()
    _write_probability(tmp_path, probability)
    write_instances_3d(tmp_path, pixel_size=(4.0, 5.0), z_spacing=40.0)  # 800 nm³ per voxel
    rows = list(csv.DictReader((tmp_path / "instances_3d.csv").open()))
    assert list(rows[0]) == [*TABLE_COLUMNS, "volume_um3"]
    assert [float(row["volume_um3"]) for row in rows] == pytest.approx([int(row["volume"]) * 800e-9 for row in rows])
    assert rows[0]["volume"] == "90" and rows[0]["volume_um3"] == "7.2e-05"  # the U: arms of 40, 10 more in the bar
    write_instances_3d(tmp_path, pixel_size=(4.0, 5.0))  # no z spacing: voxels only
    assert next(csv.reader((tmp_path / "instances_3d.csv").open())) == list(TABLE_COLUMNS)


def test_watershed_in_memory_and_refused_over_the_memory_limit(tmp_path) -> None:
    zz, yy, xx = np.mgrid[:12, :20, :36]
    probability = np.zeros((12, 20, 36), np.float32)
    density = np.zeros_like(probability)
    for cz, cy, cx in [(6, 10, 11), (6, 10, 24)]:
        r2 = (zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2
        probability[r2 <= 49] = 1.0
        density += np.exp(-r2 / 18.0).astype(np.float32)
    _write_probability(tmp_path, probability)
    tifffile.imwrite(tmp_path / "density.tif", density, photometric="minisblack")
    args = {"method": "watershed", "peak_min_distance": 5, "peak_threshold": 0.1}
    write_instances_3d(tmp_path, block_slices=4, **args)
    expected = instances_3d(probability, density, **args)
    assert expected.max() == 2 and np.array_equal(read_volume(tmp_path / "instances_3d.tif"), expected)
    assert [r["volume"] for r in csv.DictReader((tmp_path / "instances_3d.csv").open())] == [
        str(int((expected == i).sum())) for i in (1, 2)]  # fmt: skip
    for name in ("instances_3d.tif", "instances_3d.csv"):
        (tmp_path / name).unlink()
    raises_one_line(write_instances_3d, tmp_path, memory_limit_gb=1e-6, name="over the limit", **args)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["density.tif", "probability.tif"]  # nothing written
    write_instances_3d(tmp_path, memory_limit_gb=1e-6)  # components: bounded, no limit


def _cubes(n: int) -> np.ndarray:
    """n disjoint 4x4x4 cubes with ids 1..n along x in a (6, 6, 6n) volume."""
    volume = np.zeros((6, 6, 6 * n), np.int32)
    for i in range(n):
        volume[1:5, 1:5, 6 * i + 1 : 6 * i + 5] = i + 1
    return volume


def test_ap_perfect_prediction_is_one() -> None:
    gt = _cubes(3)
    pred = np.where(gt > 0, gt + 10, 0)  # other ids, same objects
    assert instance_ap(pred, gt) == {"ap50": 1.0, "ap75": 1.0}


def test_ap_with_one_false_positive_and_one_miss() -> None:
    gt = _cubes(4)
    gt[gt == 4] = 0  # 3 true objects; the 4th cube is a false positive below
    pred = _cubes(4)
    pred[pred == 3] = 0  # gt 3 is missed
    probability = np.zeros(gt.shape, np.float32)
    for pid, score in ((1, 0.9), (4, 0.8), (2, 0.7)):  # ranked: TP, FP, TP
        probability[pred == pid] = score
    # recall 1/3, 1/3, 2/3; precision 1, 1/2, 2/3 -> envelope 1, 2/3, 2/3;
    # 101 points: r in 0..0.33 (34) -> 1, r in 0.34..0.66 (33) -> 2/3, r >= 0.67 (34) -> 0
    expected = (34 + 33 * 2 / 3) / 101
    ap = instance_ap(pred, gt, probability)
    assert ap["ap50"] == pytest.approx(expected) and ap["ap75"] == pytest.approx(expected)
    assert instance_ap(pred, gt)["ap50"] == pytest.approx(67 / 101)  # equal sizes: id order, TP TP FP


def test_ap50_and_ap75_differ_for_iou_between() -> None:
    gt = np.zeros((2, 5, 10), np.int32)
    gt[0, 0, :10] = 1
    pred = np.zeros_like(gt)
    pred[0, 0, :6] = 1  # IoU 6/10
    assert instance_ap(pred, gt) == {"ap50": 1.0, "ap75": 0.0}
    assert ap_from_matches(np.zeros(0, bool), 1) == 0.0 and np.isnan(ap_from_matches(np.ones(1, bool), 0))


def test_gt_instances_3d_links_per_slice_ids() -> None:
    per_slice = np.zeros((3, 4, 4), np.int32)
    per_slice[0, :2, :2], per_slice[1, :2, :2], per_slice[2, 3, 3] = 1, 2, 3  # ids do not span slices
    assert np.unique(gt_instances_3d(per_slice)).tolist() == [0, 1, 2]
    volume_ids = per_slice.copy()
    volume_ids[1][volume_ids[1] == 2] = 1  # id 1 spans two slices: taken as it is
    assert gt_instances_3d(volume_ids) is volume_ids


def test_bad_inputs_are_one_line(tmp_path) -> None:
    raises_one_line(instance_ap, np.zeros((2, 4, 4), np.int32), np.zeros((2, 4, 5), np.int32), name="shape")
    raises_one_line(instance_ap, np.zeros((1, 2, 4, 4), np.int32), np.zeros((1, 2, 4, 4), np.int32), name="(Z, Y, X)")
    raises_one_line(instances_3d, np.zeros((1, 2, 4, 4), np.float32), name="probability")
    raises_one_line(instances_3d, np.zeros((2, 4, 4), np.float32), np.zeros((2, 4, 5), np.float32), name="density")
    raises_one_line(instances_3d, np.zeros((2, 4, 4), np.float32), method="magic", name="magic")
    (tmp_path / "a_file").write_text("")
    raises_one_line(write_instances_3d, tmp_path / "a_file", name="a_file")
    raises_one_line(write_instances_3d, tmp_path, name="probability.tif")
    tifffile.imwrite(tmp_path / "probability.tif", np.zeros((2, 4, 4), np.float32), photometric="minisblack")
    raises_one_line(write_instances_3d, tmp_path, method="watershed", name="density.tif")
    for bad in (0, 2.5, True):
        raises_one_line(write_instances_3d, tmp_path, block_slices=bad, name="block_slices")
    for bad in (0, -40, "40nm", float("nan")):
        raises_one_line(write_instances_3d, tmp_path, z_spacing=bad, name="--z_spacing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "probability.tif"]  # nothing written
    tifffile.imwrite(tmp_path / "probability.tif", np.full((2, 4, 4), np.nan, np.float32), photometric="minisblack")
    raises_one_line(write_instances_3d, tmp_path, name="NaN")


def _parsed(files: str, **overrides):
    parser = ConfigParser()
    parser.read_config(files)
    parser.update(overrides)
    return parser.get_parsed_content("run")


def test_real_epfl_crop_instances_3d_and_ap(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    crop = (slice(None), slice(128, 384), slice(128, 384))
    image = tifffile.imread(need(EPFL / "training.tif"), key=[120, 121, 122])[crop]
    label = tifffile.imread(need(EPFL / "training_instances.tif"), key=[120, 121, 122])[crop]
    tifffile.imwrite(tmp_path / "image.tif", image, photometric="minisblack")
    tifffile.imwrite(tmp_path / "label.tif", label, photometric="minisblack")
    pred = tmp_path / "pred"
    _parsed("configs/inference.yaml", input_image=str(tmp_path / "image.tif"), output_dir=str(pred),
            checkpoint=str(need(REPO / "models" / "model.pt")), instances_3d=True, device="$torch.device('cpu')",
            pixel_size=5, z_spacing=5, **{"link_3d#block_slices": 2})  # fmt: skip
    instances = read_volume(pred / "instances_3d.tif")
    assert instances.shape == (3, 256, 256) and instances.max() > 0
    # every 2D instance (>= 16 px) lies in a 3D one (>= 16 voxels), and 3D instances only where probability >= 0.5
    assert (instances > 0)[read_volume(pred / "instances.tif") > 0].all()
    assert (read_volume(pred / "probability.tif") >= 0.5)[instances > 0].all()
    rows = list(csv.DictReader((pred / "instances_3d.csv").open()))
    ids, counts = np.unique(instances[instances > 0], return_counts=True)
    assert [int(r["id"]) for r in rows] == ids.tolist() and [int(r["volume"]) for r in rows] == counts.tolist()
    assert [float(r["volume_um3"]) for r in rows] == pytest.approx((counts * 125e-9).tolist(), rel=1e-5)  # 5 nm voxels
    spans = [int(r["z1"]) - int(r["z0"]) for r in rows]
    assert max(spans) == 3  # mitochondria run through all three slices
    _parsed("configs/evaluate.yaml", prediction_dir=str(pred), label=str(tmp_path / "label.tif"), slices=None,
            output_dir=str(tmp_path / "scores"))  # fmt: skip
    metrics = json.loads((tmp_path / "scores" / "metrics.json").read_text())
    # the NoAdapt model finds these mitochondria poorly (Dice ~0.3 here), so only range and consistency are checked
    assert 0.0 <= metrics["ap75"] <= metrics["ap50"] <= 1.0
    direct = instance_ap(instances, label.astype(np.int32), read_volume(pred / "probability.tif"))
    assert direct == {"ap50": metrics["ap50"], "ap75": metrics["ap75"]}
    assert "dice" in metrics and "pq" in metrics


def test_a_bad_z_spacing_stops_inference_before_anything_is_written(real_crops, tmp_path) -> None:
    from tests.helpers import assert_one_line_error, run_bundle

    result = run_bundle("--config_file", "configs/inference.yaml", "--input_image", str(real_crops["val_image"]),
                        "--output_dir", str(tmp_path / "out"), "--instances_3d", "True", "--z_spacing", "-5")  # fmt: skip
    assert_one_line_error(result, "--z_spacing", "-5")
    assert not (tmp_path / "out").exists()


def test_volume_in_um3_from_the_z_spacing_the_input_states(tmp_path, monkeypatch) -> None:
    """configs/inference.yaml --instances_3d True on an OME-Zarr that states its voxel size (30 nm between slices,
    4.6 nm pixels): instances_3d.csv has volume_um3 without --z_spacing, at the spacing of the predicted slices."""
    import torch

    from bundle.data.readers.zarr import write_ome_zarr
    from bundle.networks import MultiTaskUNet

    monkeypatch.chdir(REPO)
    torch.manual_seed(0)
    torch.save({"model": MultiTaskUNet(width=4).state_dict()}, tmp_path / "tiny.pt")
    image = np.random.default_rng(0).integers(0, 255, (6, 64, 64), dtype=np.uint8)
    write_ome_zarr(tmp_path / "vol.ome.zarr", image, pixel_size=(4.6, 4.6), z_spacing=30.0)
    pred = tmp_path / "pred"  # every 2nd slice, at threshold 0: one instance of all their voxels
    _parsed("configs/inference.yaml", input_image=str(tmp_path / "vol.ome.zarr"), output_dir=str(pred),
            checkpoint=str(tmp_path / "tiny.pt"), width=4, device="$torch.device('cpu')", instances_3d=True,
            slices="0-5:2", **{"postprocessing#threshold": 0.0})  # fmt: skip
    rows = list(csv.DictReader((pred / "instances_3d.csv").open()))
    assert list(rows[0]) == [*TABLE_COLUMNS, "volume_um3"] and [r["volume"] for r in rows] == [str(3 * 64 * 64)]
    assert float(rows[0]["volume_um3"]) == pytest.approx(3 * 64 * 64 * 60 * 4.6 * 4.6 * 1e-9, rel=1e-5)  # 2 x 30 nm

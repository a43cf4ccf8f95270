"""Safe by default: the careless-user cases of docs/reliability.md, each with its one-line error or its correct result.

Each test names the class it replays (docs/reliability.md lists them all). The command-line cases run the bundle as
a user would (`python -m monai.bundle run`, `scripts/finetune.py`); the rest call the function that decides.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml

from bundle.data.io import parse_slices, read_label_instances, read_volume
from bundle.errors import InputError, find_input_error
from bundle.handlers.resume import ResumeFromLatest, latest_checkpoint
from bundle.inference.predict import predict_slice
from bundle.metrics.evaluate import evaluate_predictions
from bundle.metrics.instance import instance_scores
from bundle.networks import MultiTaskUNet
from bundle.outputs import check_output_dir, claim_output_dir
from bundle.overrides import check_command_line, command_line_overrides, unknown_override
from tests.helpers import EPFL, REPO, assert_one_line_error, need, raises_one_line, run_bundle

MARKER = "payload_ran"


class Payload:
    """A pickle that creates a file when it is unpickled (what a planted checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def plant(folder: Path) -> Path:
    """A checkpoint_epoch=9.pt in folder/checkpoints that runs a payload when loaded with weights_only=False."""
    (folder / "checkpoints").mkdir(parents=True)
    path = folder / "checkpoints" / "checkpoint_epoch=9.pt"
    torch.save({"model": Payload(folder / MARKER)}, path)
    return path


# ------------------------------------------------------------------------------------------- 1. code execution
def test_planted_checkpoint_never_runs_and_is_one_line(tmp_path: Path) -> None:
    planted = plant(tmp_path)
    raises_one_line(latest_checkpoint, tmp_path / "checkpoints", name="not a weights-only checkpoint")
    resume = ResumeFromLatest(tmp_path / "checkpoints", {"model": MultiTaskUNet(width=8)})
    with pytest.raises(InputError, match=re.escape(str(planted))):
        resume(None)
    assert not (tmp_path / MARKER).exists()
    # the loader itself is safe too: torch refuses the payload under weights_only
    with pytest.raises(Exception):
        torch.load(planted, weights_only=True)
    assert not (tmp_path / MARKER).exists()


def test_planted_checkpoint_stops_finetune_before_anything_runs(real_crops: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    plant(out)
    points = tmp_path / "points.csv"
    points.write_text("z,y,x\n0,100,100\n")
    result = subprocess.run([sys.executable, "scripts/finetune.py", "--target_image", str(real_crops["val_image"]),
                             "--points", str(points), "--output_dir", str(out)],
                            cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert_one_line_error(result, "checkpoint_epoch=9.pt", "not a weights-only checkpoint")
    assert not (out / MARKER).exists() and not (out / "finetune.json").exists()


def test_truncated_checkpoint_is_skipped_for_the_one_before(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    torch.save({"model": MultiTaskUNet(width=8).state_dict()}, folder / "checkpoint_epoch=1.pt")
    (folder / "checkpoint_epoch=2.pt").write_bytes((folder / "checkpoint_epoch=1.pt").read_bytes()[:200])
    assert latest_checkpoint(folder) == folder / "checkpoint_epoch=1.pt"


# ------------------------------------------------------------------------------------------- 2. unknown keys
def test_mistyped_key_is_refused_with_the_closest_one(real_crops: dict[str, Path], tmp_path: Path) -> None:
    result = run_bundle("--config_file", "configs/inference.yaml", "--image", str(real_crops["val_image"]),
                        "--output_dir", str(tmp_path / "out"))  # fmt: skip
    assert_one_line_error(result, "--image", "did you mean --input_image")
    assert not (tmp_path / "out").exists()


def test_a_key_of_an_override_config_names_that_config() -> None:
    """`--workers` on inference.yaml alone: the fix is configs/inference_cluster.yaml, not the closest key."""
    error = unknown_override(["workers"], [REPO / "configs" / "inference.yaml"])
    assert "it is a key of configs/inference_cluster.yaml: add that file to --config_file" in str(error), error
    error = unknown_override(["target_points"], [REPO / "configs" / "train.yaml"])
    assert "configs/finetune.yaml" in str(error), error  # the override nearest to train.yaml, not adapt_cafa.yaml
    error = unknown_override(["image"], [REPO / "configs" / "inference.yaml"])
    assert "did you mean --input_image" in str(error), error  # evaluate.yaml is a command of its own


def test_inference_needs_its_input(tmp_path: Path) -> None:
    result = run_bundle("--config_file", "configs/inference.yaml", "--output_dir", str(tmp_path / "out"))
    assert_one_line_error(result, "input_image", "--input_image VOL")
    assert not (tmp_path / "out").exists()


def test_override_keys_are_checked_against_every_config_of_the_run() -> None:
    stack = [REPO / "configs" / name for name in ("train.yaml", "finetune.yaml", "adapt_wda.yaml")]
    assert unknown_override(["target_points", "validate#inferer#overlap", "train#handlers#0"], stack) is None
    error = unknown_override(["tta_view"], stack)
    assert "--tta_view" in str(error) and "did you mean --tta_views" in str(error)
    argv = ["--config_file", "['configs/train.yaml','configs/oracle.yaml']", "--seed=3", "--tracking", "mlflow",
            "--meta_file", "m.json", "--num_iterations", "4"]  # fmt: skip
    assert command_line_overrides(argv) == (["configs/train.yaml", "configs/oracle.yaml"], ["seed", "num_iterations"])
    main = str(Path(torch.__file__).parents[1] / "monai" / "bundle" / "__main__.py")
    with pytest.raises(InputError, match="--sead"):
        check_command_line([main, "run", "--config_file", str(stack[0]), "--sead", "1"])
    check_command_line(["scripts/finetune.py", "run", "--sead", "1"])  # another entry point checks its own arguments


def test_finetune_refuses_an_unknown_config_key(real_crops: dict[str, Path], tmp_path: Path) -> None:
    points = tmp_path / "points.csv"
    points.write_text("z,y,x\n0,100,100\n")
    result = subprocess.run([sys.executable, "scripts/finetune.py", "--target_image", str(real_crops["val_image"]),
                             "--points", str(points), "--output_dir", str(tmp_path / "out"), "--tta_view", "3"],
                            cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert_one_line_error(result, "--tta_view", "--tta_views")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("spec, expected", [(2, [2]), ("2", [2]), ("all", [0, 1, 2, 3]), ("1-2", [1, 2]),
                                            ((0, 3), [0, 3]), ("0-3:2", [0, 2])])  # fmt: skip
def test_slices_accept_one_index_all_and_ranges(spec, expected) -> None:
    assert parse_slices(spec, 4) == expected


def test_slices_of_another_type_are_one_line() -> None:
    raises_one_line(parse_slices, 2.5, 4, name="not a slice selection")


# ------------------------------------------------------------------------------------------- 3./4. output folders
def test_a_busy_output_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from bundle.outputs import claim_output_dir; "
                               f"claim_output_dir({str(folder)!r}); print('held', flush=True); time.sleep(60)"],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        raises_one_line(claim_output_dir, folder, name="another run is writing into this folder")
    finally:
        holder.kill()
        holder.wait()
    assert claim_output_dir(folder) == folder  # free again once the holder is gone, however it ended
    assert claim_output_dir(folder) == folder  # and the same process may claim it twice
    assert sorted(folder.iterdir()) == []  # the lock leaves no file behind


def test_stale_outputs_of_an_earlier_run_are_removed_never_scored(real_crops: dict[str, Path], tmp_path: Path) -> None:
    out, scores = tmp_path / "pred", tmp_path / "scores"
    common = ["--config_file", "configs/inference.yaml", "--input_image", str(real_crops["val_image"]),
              "--output_dir", str(out)]  # fmt: skip
    assert run_bundle(*common, "--instances_3d", "True").returncode == 0
    assert (out / "instances_3d.tif").is_file()
    result = run_bundle(*common)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (out / "instances_3d.tif").exists() and not (out / "instances_3d.csv").exists()
    assert "instances_3d.tif: removed" in result.stdout + result.stderr
    metrics = evaluate_predictions(out, real_crops["val_label"], scores, overlay_slices=[])
    assert "ap50" not in metrics
    (scores / "overlay_z007.png").write_bytes(b"old")
    evaluate_predictions(out, real_crops["val_label"], scores, image=real_crops["val_image"], overlay_slices=[0])
    assert sorted(p.name for p in scores.iterdir()) == ["metrics.json", "overlay_z000.png"]


# ------------------------------------------------------------------------------------------- 5. one line, not a traceback
def test_bad_output_paths_are_one_line_and_create_nothing(tmp_path: Path) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    raises_one_line(check_output_dir, "", name="empty path")
    raises_one_line(check_output_dir, "  ", name="empty path")
    raises_one_line(check_output_dir, a_file, name="is a file")
    raises_one_line(check_output_dir, a_file / "below", name="lies below the file")
    (tmp_path / "out" / "probability.tif").mkdir(parents=True)
    raises_one_line(check_output_dir, tmp_path / "out", ["probability.tif"], name="is a folder where this run writes")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "out"]


def test_unwritable_output_folder_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # tests may run as root, who can write anywhere
    raises_one_line(check_output_dir, tmp_path / "new", name="not writable")


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "no space left"), (errno.EROFS, "read-only"),
                                         (errno.EACCES, "permission denied")])  # fmt: skip
def test_full_or_read_only_disks_become_one_line(code: int, words: str) -> None:
    wrapped = RuntimeError("MONAI wraps it")
    wrapped.__cause__ = OSError(code, os.strerror(code), "/data/out/probability.tif")
    error = find_input_error(wrapped)
    assert error is not None and "/data/out/probability.tif" in str(error) and words in str(error)
    assert find_input_error(OSError(errno.ENOENT, "gone", "x")) is None  # other failures keep their traceback


def test_a_missing_optional_package_names_its_group() -> None:
    error = find_input_error(ImportError("required package `mlflow` is not installed or the version doesn't match"))
    assert error is not None and "bash scripts/setup.sh tracking" in str(error)


def test_finetune_empty_output_dir_is_refused_not_the_current_folder(real_crops: dict[str, Path], tmp_path: Path) -> None:
    points = tmp_path / "points.csv"
    points.write_text("z,y,x\n0,100,100\n")
    before = sorted(REPO.iterdir())
    result = subprocess.run([sys.executable, "scripts/finetune.py", "--target_image", str(real_crops["val_image"]),
                             "--points", str(points), "--output_dir", ""], cwd=REPO, capture_output=True, text=True)
    assert_one_line_error(result, "empty path")
    assert sorted(REPO.iterdir()) == before


def test_output_dir_that_is_a_file_stops_training(real_crops: dict[str, Path], tmp_path: Path) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    result = run_bundle("--config_file", "configs/train.yaml", "--source_image", str(real_crops["src_image"]),
                        "--source_label", str(real_crops["src_label"]), "--validation", "False",
                        "--output_dir", str(a_file))  # fmt: skip
    assert_one_line_error(result, "a_file", "is a file")


# ------------------------------------------------------------------------------------------- 6. silent nonsense
def test_a_yxz_stack_is_refused_everywhere(tmp_path: Path) -> None:
    path = tmp_path / "yxz.tif"
    tifffile.imwrite(path, np.zeros((256, 256, 5), np.uint8), photometric="minisblack")
    raises_one_line(read_volume, path, name="(Z, Y, X)")
    result = run_bundle("--config_file", "configs/inference.yaml", "--input_image", str(path),
                        "--output_dir", str(tmp_path / "out"))  # fmt: skip
    assert_one_line_error(result, "yxz.tif", "one axis is far shorter")
    assert not (tmp_path / "out").exists()
    tifffile.imwrite(path, np.zeros((3, 256, 200), np.uint8), photometric="minisblack")
    assert read_volume(path).shape == (3, 256, 200)  # thin volumes of ordinary slices are fine


def test_a_uint16_mask_is_read_as_a_mask(tmp_path: Path) -> None:
    ids = tifffile.imread(need(EPFL / "training_instances.tif"), key=[120, 121])
    for dtype, value in ((np.uint16, 255), (np.uint16, 1), (np.int32, 255)):
        tifffile.imwrite(tmp_path / "mask.tif", ((ids > 0) * value).astype(dtype), photometric="minisblack")
        read = read_label_instances(tmp_path / "mask.tif")
        assert len(np.unique(read[0])) - 1 > 10  # components, not one instance per slice
        assert instance_scores(read, ids)["slice_mean"]["pq"] > 0.9  # the same instances, up to touching ones


def test_an_em_image_is_not_taken_for_labels(tmp_path: Path) -> None:
    image = tifffile.imread(need(EPFL / "training.tif"), key=[120, 121])
    tifffile.imwrite(tmp_path / "image.tif", image, photometric="minisblack")
    raises_one_line(read_label_instances, tmp_path / "image.tif", name="an image, not labels")
    vnc_mask = read_label_instances(need(REPO.parent / "shared" / "data" / "vnc3" / "stack1" / "mitochondria"))
    assert vnc_mask.max() > 0  # anti-aliased 8-bit masks still read


def test_scores_need_probabilities_and_a_probability_threshold(real_crops: dict[str, Path], tmp_path: Path) -> None:
    pred = tmp_path / "pred"
    pred.mkdir()
    tifffile.imwrite(pred / "probability.tif", np.full((2, 256, 256), 3.0, np.float32), photometric="minisblack")
    tifffile.imwrite(pred / "instances.tif", np.zeros((2, 256, 256), np.uint32), photometric="minisblack")
    raises_one_line(evaluate_predictions, pred, real_crops["val_label"], tmp_path / "s", overlay_slices=[],
                    name="are not probabilities")  # fmt: skip
    tifffile.imwrite(pred / "probability.tif", np.zeros((2, 256, 256), np.float32), photometric="minisblack")
    for threshold in (2, 0, "0.5", True):
        raises_one_line(evaluate_predictions, pred, real_crops["val_label"], tmp_path / "s", threshold=threshold,
                        overlay_slices=[], name="threshold")  # fmt: skip
    assert not (tmp_path / "s").exists()


def test_a_slice_smaller_than_the_window_is_predicted_as_itself() -> None:
    """The 512² window shrinks to a 256² slice: the result is the network on the slice, no zero padding."""
    torch.manual_seed(0)
    network = MultiTaskUNet(width=8).eval()
    from monai.inferers import SlidingWindowInferer

    image = np.random.default_rng(0).normal(size=(256, 192)).astype(np.float32)
    probability, density = predict_slice(network, SlidingWindowInferer([512, 512], 1, 0.25, mode="gaussian"), image,
                                         torch.device("cpu"))  # fmt: skip
    with torch.no_grad():
        out = network(torch.from_numpy(image)[None, None])
    expected = torch.softmax(out[:, :2], 1)[0, 1].numpy()
    assert probability.shape == density.shape == (256, 192)
    np.testing.assert_allclose(probability, expected, atol=1e-5)


# ------------------------------------------------------------------------------------------- 7. any folder, the zoo's checks
@pytest.fixture()
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A current folder that is not the repository (the Model Zoo CI runs from its own root)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_zoo_verify_checks_pass_from_another_folder(elsewhere: Path) -> None:
    """What the Model Zoo's ci/verify_bundle.py runs (verify_data_shape, verify_torchscript), from another folder."""
    from monai.bundle import ckpt_export, verify_net_in_out

    common = {"meta_file": str(REPO / "configs" / "metadata.json"), "config_file": str(REPO / "configs" / "inference.yaml"),
              "bundle_root": str(REPO)}  # fmt: skip
    verify_net_in_out(net_id="network_def", **common)
    ckpt_export("network_def", filepath=str(elsewhere / "verify_model.ts"), ckpt_file=str(REPO / "models" / "model.pt"),
                **common)  # fmt: skip
    assert torch.jit.load(str(elsewhere / "verify_model.ts")) is not None
    for required in ("configs/metadata.json", "LICENSE", "models/model.pt", "configs/inference.yaml", "docs/README.md"):
        assert (REPO / required).is_file(), required


@pytest.mark.parametrize("workflow_type", ["train", "inference"])
def test_check_properties_pass_from_another_folder(workflow_type: str, elsewhere: Path) -> None:
    from monai.bundle import ConfigWorkflow

    config = "train.yaml" if workflow_type == "train" else "inference.yaml"
    extra = {"output_dir": str(elsewhere / "run")} | ({"input_image": str(need(EPFL / "training.tif"))}
                                                       if workflow_type == "inference" else {})  # fmt: skip
    workflow = ConfigWorkflow(config_file=str(REPO / "configs" / config), meta_file=str(REPO / "configs" / "metadata.json"),
                              logging_file=str(REPO / "configs" / "logging.conf"), workflow_type=workflow_type,
                              bundle_root=str(REPO), **extra)  # fmt: skip
    workflow.initialize()
    assert workflow.check_properties() == []
    assert Path(workflow.parser.get_parsed_content("dataset_dir")).resolve() == (REPO.parent / "shared" / "data").resolve()


def test_large_files_md5_are_the_committed_weights() -> None:
    entries = yaml.safe_load((REPO / "large_files.yml").read_text())["large_files"]
    assert {e["path"] for e in entries} == {f"models/{p.name}" for p in (REPO / "models").glob("*.pt")}
    for entry in entries:
        assert set(entry) == {"path", "url", "hash_val", "hash_type"} and entry["hash_type"] == "md5"
        assert hashlib.md5((REPO / entry["path"]).read_bytes()).hexdigest() == entry["hash_val"], entry["path"]


# ------------------------------------------------------------------------------------------- the docs' commands
def documented_bundle_commands() -> list[tuple[str, list[str]]]:
    """Every `python -m monai.bundle run` command in README.md and docs/*.md, as (file, arguments)."""
    found = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = re.sub(r"\\\n\s*", " ", doc.read_text())  # join continued lines
        for line in text.splitlines():
            if "monai.bundle run " in line and "--config_file" in line:
                command = line[line.index("monai.bundle run ") + len("monai.bundle run "):].split("#")[0]
                args = shlex.split(command.replace("[", " ").replace("]", " "), posix=True)
                found.append((str(doc.relative_to(REPO)), args))
    return found


def test_every_documented_command_uses_known_keys() -> None:
    commands = documented_bundle_commands()
    assert len(commands) >= 15, commands
    for doc, args in commands:
        raw = " ".join(args)
        files = re.findall(r"configs/[\w]+\.yaml", raw)
        assert files and all((REPO / f).is_file() for f in files), (doc, raw)
        keys = [a[2:].split("=")[0] for a in args if a.startswith("--")]
        keys = [k for k in keys if k not in ("config_file", "meta_file", "tracking", "logging_file")]
        error = unknown_override(keys, [REPO / f for f in files])
        assert error is None, f"{doc}: {raw}: {error}"
        if files == ["configs/inference.yaml"]:
            assert "input_image" in keys, f"{doc}: {raw}: inference needs --input_image"


def test_the_model_zoo_page_predict_and_score_commands_run_as_written(real_crops: dict[str, Path], tmp_path: Path) -> None:
    """docs/README.md's inference and evaluate commands, executed with its placeholders replaced by real crops."""
    page = [(doc, args) for doc, args in documented_bundle_commands() if doc == "docs/README.md"]
    chosen = [args for _, args in page if args[1] in ("configs/inference.yaml", "configs/evaluate.yaml")]
    assert [args[1] for args in chosen] == ["configs/inference.yaml", "configs/evaluate.yaml"], page
    placeholders = {"VOL.tif": str(real_crops["val_image"]), "LABELS.tif": str(real_crops["val_label"]),
                    "OUT": str(tmp_path / "out"), "OUT/scores": str(tmp_path / "out" / "scores")}
    for args in chosen:
        result = run_bundle(*[placeholders.get(a, a) for a in args])
        assert result.returncode == 0, result.stderr[-3000:]
    assert {"probability.tif", "density.tif", "instances.tif"} <= {p.name for p in (tmp_path / "out").iterdir()}
    scores = json.loads((tmp_path / "out" / "scores" / "metrics.json").read_text())
    assert 0.5 < scores["dice"] <= 1.0, scores  # models/model.pt on two EPFL validation crops


def test_your_own_label_is_scored_whole_and_a_shorter_prediction_is_one_line(tmp_path: Path) -> None:
    """evaluate.yaml without --slices: EPFL's 120-164 only for EPFL's default labels, never for a label file you name."""
    pred, out = tmp_path / "pred", tmp_path / "scores"
    pred.mkdir()
    tifffile.imwrite(pred / "probability.tif", np.zeros((2, 64, 64), np.float32), photometric="minisblack")
    tifffile.imwrite(pred / "instances.tif", np.zeros((2, 64, 64), np.uint32), photometric="minisblack")
    label = np.zeros((5, 64, 64), np.uint16)
    label[:, 10:20, 10:20] = 1
    tifffile.imwrite(tmp_path / "label.tif", label, photometric="minisblack")
    result = run_bundle("--config_file", "configs/evaluate.yaml", "--prediction_dir", str(pred),
                        "--label", str(tmp_path / "label.tif"), "--output_dir", str(out))  # fmt: skip
    assert_one_line_error(result, "label.tif", "5 label slices", "the prediction has 2", "--slices")
    assert not out.exists()


@pytest.mark.parametrize("value", ["1", "-0.1", "1.5"])
def test_a_holdout_share_outside_0_1_is_one_line(real_crops: dict[str, Path], tmp_path: Path, value: str) -> None:
    points = tmp_path / "points.csv"
    points.write_text("z,y,x\n0,100,100\n")
    result = subprocess.run([sys.executable, "scripts/finetune.py", "--target_image", str(real_crops["val_image"]),
                             "--points", str(points), "--output_dir", str(tmp_path / "out"), "--holdout_clicks", value],
                            cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert_one_line_error(result, "--holdout_clicks")
    assert not (tmp_path / "out").exists()


def test_a_bad_outline_margin_through_monai_bundle_run_is_one_line_and_writes_nothing(real_crops: dict[str, Path],
                                                                                      tmp_path: Path) -> None:  # fmt: skip
    points = tmp_path / "points.csv"
    points.write_text("z,y,x\n0,100,100\n")
    result = run_bundle("--config_file", "['configs/train.yaml','configs/finetune.yaml']",
                        "--target_image", str(real_crops["val_image"]), "--target_points", str(points),
                        "--target_slices", "[0]", "--outline_margin", "-1", "--output_dir", str(tmp_path / "out"))  # fmt: skip
    assert_one_line_error(result, "outline_margin", "-1")
    assert not (tmp_path / "out").exists()

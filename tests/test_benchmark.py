"""Tests for scripts/benchmark.py with a fake bundle runner: resume, the generated block, statistics, errors."""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

spec = importlib.util.spec_from_file_location("benchmark", REPO / "scripts" / "benchmark.py")
benchmark = importlib.util.module_from_spec(spec)
sys.modules["benchmark"] = benchmark  # dataclasses look the module up
spec.loader.exec_module(benchmark)

# Dice of each fake run by the run folder's name prefix (the other metrics are Dice - 0.1)
DICE = {"noadapt": 0.65, "oracle": 0.95, "wda": 0.80, "uda": 0.74}


def option(command: list[str], name: str) -> str:
    """The value after --name in a command."""
    return command[command.index(f"--{name}") + 1]


class FakeRunner:
    """Stands in for benchmark.run_command: writes what each bundle step would, records the calls."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail_on = fail_on  # a step whose first call is 'killed' (raises KeyboardInterrupt)

    def __call__(self, command: list[str], log_path: Path) -> tuple[int, int]:
        """Fake one bundle command from the repo root."""
        self.calls.append(command)
        step = log_path.stem
        if step == self.fail_on:
            self.fail_on = None
            raise KeyboardInterrupt
        out = REPO / option(command, "output_dir")
        out.mkdir(parents=True, exist_ok=True)
        if step == "train":
            (out / "model.pt").write_bytes(b"fake")
        elif step.endswith("evaluate"):
            run_name = out.parent.name
            seed = int(run_name.split("seed")[1][0])
            dice = DICE[run_name.split("-")[0]] + 0.01 * seed
            metrics = {k: dice - (0.1 if k != "dice" else 0.0) for k in benchmark.METRICS}
            (out / "metrics.json").write_text(json.dumps(metrics | {"volume": {"dice": 0.0}}))
        log_path.write_text("fake\n")
        return 0, 123_000_000


@pytest.fixture
def fake(monkeypatch) -> FakeRunner:
    """A FakeRunner installed as the benchmark's runner."""
    runner = FakeRunner()
    monkeypatch.setattr(benchmark, "run_command", runner)
    monkeypatch.setattr(benchmark, "git_commit", lambda: ("abc1234", True))  # git is slow on a loaded machine
    return runner


def main(tmp_path: Path, *args: str) -> int:
    """Run the benchmark into tmp_path/runs with tmp_path/results.md."""
    return benchmark.main([*args, "--runs_dir", str(tmp_path / "runs"), "--results", str(tmp_path / "results.md")])


def test_resume_skips_finished_runs_and_reruns_a_killed_one(tmp_path, fake, capsys) -> None:
    assert main(tmp_path, "--methods", "noadapt", "wda", "--seeds", "0", "1") == 0
    results = sorted((tmp_path / "runs").glob("*/result.json"))
    assert [p.parent.name for p in results] == [
        "noadapt-cpu-seed0-reused", "noadapt-cpu-seed1", "wda-cpu-seed0-15pct-split1", "wda-cpu-seed1-15pct-split1"
    ]  # fmt: skip
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in results}
    reused = json.loads(results[0].read_text())
    assert reused["train_wall_s"] is None and reused["reused_checkpoint"] == "models/source_model.pt"
    assert option(fake.calls[0], "checkpoint") == "models/source_model.pt"
    first = json.loads(results[2].read_text())
    assert first["metrics"]["dice"] == pytest.approx(0.80) and first["peak_rss_bytes"] == 123_000_000
    assert set(first["steps"]) == {"train", "inference", "evaluate"} and first["commit"] == "abc1234"
    assert option(first["steps"]["train"]["command"], "target_points").endswith("points/15pct_split1.csv")

    # a new split whose evaluation is killed: no result.json, the training is not repeated on the rerun
    fake.calls.clear()
    fake.fail_on = "evaluate"
    with pytest.raises(KeyboardInterrupt):
        main(tmp_path, "--methods", "noadapt", "wda", "--seeds", "0", "1", "--splits", "1", "2")
    killed = tmp_path / "runs" / "wda-cpu-seed0-15pct-split2"
    assert not (killed / "result.json").exists() and (killed / "model.pt").exists()
    assert [c for c in fake.calls if "--output_dir" in c and "split1" in option(c, "output_dir")] == []
    fake.calls.clear()
    capsys.readouterr()
    assert main(tmp_path, "--methods", "noadapt", "wda", "--seeds", "0", "1", "--splits", "1", "2") == 0
    out = capsys.readouterr().out
    assert out.count(": skip (finished") == 4 and "wda-cpu-seed0-15pct-split2: finished, Dice 0.800" in out
    names = [Path(option(c, "output_dir")).name for c in fake.calls]
    assert names == ["scores", "wda-cpu-seed1-15pct-split2", "predictions", "scores"]  # killed run: only its last step
    assert json.loads((killed / "result.json").read_text())["attempts"] == 2
    with pytest.raises(FileExistsError):  # how result.json is written: never over an existing one
        benchmark.write_json(results[0], {}, exclusive=True)
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in results} == before


def test_killed_training_reruns_the_same_command_and_a_failed_step_is_one_line(tmp_path, fake, capsys, monkeypatch):
    fake.fail_on = "train"
    with pytest.raises(KeyboardInterrupt):
        main(tmp_path, "--methods", "uda")
    killed = fake.calls[-1]
    assert main(tmp_path, "--methods", "uda") == 0
    assert fake.calls[1] == killed  # same command: the bundle resumes from RUN/checkpoints
    run = tmp_path / "runs" / "uda-cpu-seed0"
    assert json.loads((run / "result.json").read_text())["steps"]["train"]["command"] == killed

    monkeypatch.setattr(benchmark, "run_command", lambda command, log_path: (1, 0))
    capsys.readouterr()
    assert main(tmp_path, "--methods", "uda", "cafa") == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("mitoda: error: ") and "cafa-cpu-seed0: step train exited with code 1" in err[0]
    assert not (tmp_path / "runs" / "cafa-cpu-seed0" / "result.json").exists() and len(err) == 2


def test_block_replaces_only_itself(tmp_path, fake) -> None:
    results = tmp_path / "results.md"
    head, tail = b"# Results\r\n\r\nhand-written \xc2\xb1 text\n\n", b"\n\n## After\ntrailing, no newline"
    results.write_bytes(head + benchmark.BEGIN.encode() + b"\nold table\n" + benchmark.END.encode() + tail)
    assert main(tmp_path, "--methods", "noadapt") == 0
    text = results.read_bytes()
    assert text.startswith(head) and text.endswith(tail) and b"old table" not in text
    assert text.count(benchmark.BEGIN.encode()) == 1 and b"| noadapt (models/source_model.pt, not retrained) |" in text
    assert (tmp_path / "benchmark_dice.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    results.write_bytes(b"no block yet\n")  # missing block: appended, the rest kept
    assert main(tmp_path, "--report_only") == 0
    text = results.read_bytes()
    assert text.startswith(b"no block yet\n\n" + benchmark.BEGIN.encode())
    assert text.endswith(benchmark.END.encode() + b"\n")


def test_mean_std_and_gap(tmp_path, fake) -> None:
    assert main(tmp_path, "--methods", "noadapt", "oracle", "wda", "uda", "--seeds", "0", "1", "2") == 0
    table = [line.split(" | ") for line in (tmp_path / "results.md").read_text().splitlines() if line.startswith("| ")]
    rows = {cells[0].strip("| *"): cells for cells in table}
    head = rows["method"]
    noadapt, oracle = statistics.mean([0.65, 0.66, 0.67]), statistics.mean([0.95, 0.96, 0.97])
    wda = [0.80, 0.81, 0.82]
    mean = rows["wda 15 %: mean ± std (n = 3)"]
    assert mean[head.index("Dice")] == f"{statistics.mean(wda):.3f} ± {statistics.stdev(wda):.3f}" == "0.810 ± 0.010"
    assert mean[head.index("IoU")] == "0.710 ± 0.010"
    assert benchmark.gap(0.80, (0.65, 0.95)) == pytest.approx(50.0)
    assert benchmark.gap(0.80, None) is None
    seed1 = next(cells for cells in table if cells[0] == "| wda 15 %" and cells[3] == "1")
    assert seed1[head.index("gap closed")] == f"{100 * (0.81 - noadapt) / (oracle - noadapt):.0f} %"
    assert rows["uda: mean ± std (n = 3)"][head.index("gap closed")].endswith(" %")
    assert (tmp_path / "benchmark_points.png").exists()  # wda 15 % and uda (0 %)


def test_one_line_errors(tmp_path, fake, capsys) -> None:
    cases = [
        (["--methods", "noadapt", "magic"], "unknown method magic"),
        (["--methods", "wda", "--dataset_dir", str(tmp_path / "nowhere")], "not a data root"),
        (["--methods", "wda", "--points_fraction", "7"], "no such points file"),
        (["--methods", "wda", "--test_image", str(tmp_path)], "go together"),
        (["--methods", "wda_source_free", "--recipe", "paper"], "only the CPU recipe's has them"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as info:
            main(tmp_path, *args)
        err = capsys.readouterr().err
        assert info.value.code == 2 and err.startswith("mitoda: error: ") and message in err and err.count("\n") == 1
    (tmp_path / "folder.md").mkdir()
    with pytest.raises(SystemExit):
        benchmark.main(["--results", str(tmp_path / "folder.md"), "--runs_dir", str(tmp_path / "runs")])
    assert "is a folder" in capsys.readouterr().err
    assert fake.calls == []


def test_dry_run_prints_commands_only(tmp_path, fake, capsys) -> None:
    methods = [m for m in benchmark.METHODS if "source_free" not in m]  # CPU recipe only (test_one_line_errors)
    assert main(tmp_path, "--methods", *methods, "--recipe", "paper", "--dry_run") == 0
    out = capsys.readouterr().out
    assert fake.calls == [] and not (tmp_path / "runs").exists() and not (tmp_path / "results.md").exists()
    assert "--config_file \"['configs/train.yaml','configs/finetune.yaml','configs/adapt_wda.yaml','configs/recipe_paper.yaml']\"" in out
    assert "--source_checkpoint " + str(tmp_path / "runs" / "noadapt-paper-seed0" / "model.pt") in out
    assert "--pseudo_label_kind entropy --pseudo_label_kwargs \"{}\"" in out and "--contrast_mode both_separate" in out
    assert out.count("# ") == len(methods)
    assert main(tmp_path, "--methods", "wda_source_free", "uda_source_free", "--dry_run") == 0
    out = capsys.readouterr().out
    assert out.count("'configs/train.yaml','configs/finetune.yaml'") == 2 and out.count("--validation False") == 2
    assert "adapt_wda.yaml" not in out  # source-free: no source batches
    assert out.count("--target_points") == 1  # the UDA variant has no points


def test_a_run_locked_by_a_live_process_is_skipped_and_a_dead_ones_lock_is_taken_over(tmp_path, fake, capsys) -> None:
    import subprocess

    runs = tmp_path / "runs"
    live, stale = runs / "noadapt-cpu-seed0-reused", runs / "wda-cpu-seed0-15pct-split1"
    dead = subprocess.Popen(["true"])
    dead.wait()  # its id now belongs to no process
    for folder, pid in ((live, os.getppid()), (stale, dead.pid)):
        folder.mkdir(parents=True)
        (folder / ".lock").write_text(str(pid))
    assert main(tmp_path, "--methods", "noadapt", "wda") == 0
    out = capsys.readouterr().out
    assert f"process {os.getppid()} is running it" in out
    assert not (live / "result.json").exists() and (live / ".lock").read_text() == str(os.getppid())
    assert (stale / "result.json").exists() and not (stale / ".lock").exists()

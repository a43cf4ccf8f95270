"""Compare methods fairly and resumably: train or adapt -> predict EPFL 120-164 -> score, one folder per run.

    python scripts/benchmark.py --methods noadapt wda uda cafa r4mito --recipe cpu --seeds 0 [--splits 1 2 3]
        [--points_fraction 5 15 30 50] [--runs_dir runs/benchmark] [--dataset_dir ../shared/data]
        [--test_image IMG --test_label LBL] [--results docs/results.md] [--dry_run | --report_only]

Each run is RUNS_DIR/<method>-<recipe>-seed<S>[-<P>pct[-split<K>]][-reused], holding its step logs (*.log), the
steps done so far (progress.json) and, once finished, result.json (metrics, wall times, peak RSS, commands, commit).
A finished run is skipped and its result.json never rewritten; an unfinished one is rerun with the same commands
from its first unfinished step (training resumes from RUN/checkpoints). Several benchmark processes may share a runs
dir: a run in progress holds RUN/.lock (its process id), and the others skip it (a killed holder's lock is taken over). Then only the block between
`<!-- benchmark:begin -->` and `<!-- benchmark:end -->` of --results is rewritten (appended if missing), and
benchmark_dice.png / benchmark_points.png are written beside it. Points: 15 % has splits (15pct_split<K>.csv);
5, 30 and 50 % have one file each (--splits does not apply). CPU-recipe adaptations start from
models/source_model.pt whatever the seed; paper-recipe ones from the paper noadapt run of their seed (added to the
plan). Bad input prints one line 'mitoda: error: ...' on stderr and exits with code 2; a failed step, code 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bundle.errors import OneLineParser as _Parser, fail as _fail  # noqa: E402
from bundle.outputs import atomic_output  # noqa: E402

TRAIN, ORACLE, PAPER = "configs/train.yaml", "configs/oracle.yaml", "configs/recipe_paper.yaml"
# the shipped source-free fine-tune; needs models/source_prototypes.pt, i.e. the CPU recipe's source model
FINETUNE = "configs/finetune.yaml"
WDA, UDA = "configs/adapt_wda.yaml", "configs/adapt_uda.yaml"  # with source batches; 0 % points
CAFA, R4MITO = "configs/adapt_cafa.yaml", "configs/adapt_r4mito.yaml"
INFERENCE, EVALUATE = "configs/inference.yaml", "configs/evaluate.yaml"
SOURCE_MODEL = "models/source_model.pt"  # NoAdapt, CPU recipe, seed 0: the default source_checkpoint of finetune.yaml

# name -> (training configs in order, extra overrides of the training command)
METHODS: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "noadapt": ((TRAIN,), {}),
    "oracle": ((TRAIN, ORACLE), {}),
    "wda": ((TRAIN, FINETUNE, WDA), {}),
    "wda_threshold": ((TRAIN, FINETUNE, WDA), {"pseudo_label_kind": "threshold", "pseudo_label_kwargs": "{}"}),
    "wda_entropy": ((TRAIN, FINETUNE, WDA), {"pseudo_label_kind": "entropy", "pseudo_label_kwargs": "{}"}),
    "uda": ((TRAIN, FINETUNE, WDA, UDA), {}),
    # source-free (scripts/finetune.py's recipe): no source batches; the last epoch's model, as there
    "wda_source_free": ((TRAIN, FINETUNE), {"validation": "False"}),
    "uda_source_free": ((TRAIN, FINETUNE, UDA), {"validation": "False"}),
    "cafa": ((TRAIN, FINETUNE, WDA, UDA, CAFA), {}),
    "r4mito": ((TRAIN, FINETUNE, WDA, UDA, CAFA, R4MITO), {}),
    "contrast": ((TRAIN, FINETUNE, WDA), {"contrast_mode": "foreground_focused"}),  # the method
    "contrast_none": ((TRAIN, FINETUNE, WDA), {"contrast_mode": "none"}),
    "contrast_source_only": ((TRAIN, FINETUNE, WDA), {"contrast_mode": "source_only"}),
    "contrast_target_only": ((TRAIN, FINETUNE, WDA), {"contrast_mode": "target_only"}),
    "contrast_both_separate": ((TRAIN, FINETUNE, WDA), {"contrast_mode": "both_separate"}),
    "contrast_background_focused": ((TRAIN, FINETUNE, WDA), {"contrast_mode": "background_focused"}),
}
METRICS = {"dice": "Dice", "iou": "IoU", "f1": "F1", "mcc": "MCC", "map": "mAP", "aji": "AJI", "pq": "PQ"}
SLICES = "120-164"
BEGIN, END = "<!-- benchmark:begin -->", "<!-- benchmark:end -->"
Result = dict[str, Any]


class StepFailed(RuntimeError):
    """A bundle command of a run exited with a non-zero code."""


class RunBusy(RuntimeError):
    """Another live benchmark process holds the run's lock."""


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextlib.contextmanager
def run_lock(out: Path):
    """Hold out/.lock (this process's id) while a run executes; a dead holder's lock is taken over, a live one's not."""
    lock = out / ".lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            holder = lock.read_text().strip() if lock.exists() else ""
            if holder.isdigit() and pid_alive(int(holder)):
                raise RunBusy(f"{out}: process {holder} is running it (lock {lock})") from None
            lock.unlink(missing_ok=True)  # left by a killed benchmark
    else:
        raise RunBusy(f"{out}: another process took its lock {lock} first")
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        yield
    finally:
        lock.unlink(missing_ok=True)


@dataclass(frozen=True)
class Run:
    """One benchmark run: a method under a recipe and seed, with a points file for the point methods."""

    method: str
    recipe: str
    seed: int
    points: int | None = None  # % of the instances given as points (None: no points)
    split: int | None = None
    reuse: bool = False  # evaluate models/source_model.pt instead of training (noadapt, CPU recipe, seed 0)

    @property
    def name(self) -> str:
        """Folder name under the runs dir."""
        points = "" if self.points is None else f"-{self.points}pct"
        split = "" if self.split is None else f"-split{self.split}"
        return f"{self.method}-{self.recipe}-seed{self.seed}{points}{split}{'-reused' if self.reuse else ''}"


def uses_points(method: str) -> bool:
    """Whether the method trains with target points (WDA and its variants, not UDA)."""
    return FINETUNE in METHODS[method][0] and UDA not in METHODS[method][0]


def source_free(method: str) -> bool:
    """Whether the method adapts without source batches (finetune.yaml without adapt_wda.yaml)."""
    return FINETUNE in METHODS[method][0] and WDA not in METHODS[method][0]


def run_command(command: list[str], log_path: Path) -> tuple[int, int]:
    """Run `command` from the repo root, appending its output to `log_path`; return (exit code, peak RSS bytes)."""
    with open(log_path, "a") as log:
        log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {shown(command)}\n")
        log.flush()
        proc = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            _, status, usage = os.wait4(proc.pid, 0)  # this child's peak RSS (or its largest reaped worker's)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss * 1024


def shown(command: list[str]) -> str:
    """The command as a shell line, with config lists in double quotes as in the README."""
    def quote(arg: str) -> str:
        if shlex.quote(arg) == arg:
            return arg
        return f'"{arg}"' if not any(c in arg for c in '"$`\\!') else shlex.quote(arg)

    return " ".join(quote(arg) for arg in command)


def path_arg(path: str | os.PathLike) -> str:
    """A path for a command run from the repo root: relative inside the repo or its parent, else absolute."""
    path = Path(os.path.abspath(path))  # not resolve(): .venv/bin/python stays the venv's link
    for base, prefix in ((REPO, ""), (REPO.parent, "../")):
        if path.is_relative_to(base):
            return prefix + str(path.relative_to(base))
    return str(path)


def bundle_command(python: str, configs: list[str], **overrides: Any) -> list[str]:
    """`python -m monai.bundle run --config_file ... --key value ...` (Path values relative to the repo)."""
    config = configs[0] if len(configs) == 1 else "[" + ",".join(f"'{c}'" for c in configs) + "]"
    command = [path_arg(python), "-m", "monai.bundle", "run", "--config_file", config]
    for key, value in overrides.items():
        command += [f"--{key}", path_arg(value) if isinstance(value, Path) else str(value)]
    return command


def points_file(dataset: Path, pct: int, split: int | None) -> Path:
    """The published points CSV of `pct` % (of `split` for the fractions that have splits)."""
    name = f"{pct}pct.csv" if split is None else f"{pct}pct_split{split}.csv"
    return dataset / "epfl_hippocampus" / "points" / name


def run_steps(run: Run, args: argparse.Namespace) -> dict[str, list[str]]:
    """The commands of a run in order: train (unless reused), inference, evaluate[, test_inference, test_evaluate]."""
    out, data, python = args.runs_dir / run.name, args.dataset_dir, args.python
    paper = [PAPER] if run.recipe == "paper" else []  # last: it sets adaptation keys too (recipe_paper.yaml)
    configs, extra = METHODS[run.method]
    steps, checkpoint = {}, REPO / SOURCE_MODEL if run.reuse else out / "model.pt"
    if not run.reuse:
        train: dict[str, Any] = {"dataset_dir": data, "seed": run.seed, "output_dir": out}
        if run.points is not None:
            train["target_points"] = points_file(data, run.points, run.split)
        if FINETUNE in configs and run.recipe == "paper":
            train["source_checkpoint"] = args.runs_dir / Run("noadapt", "paper", run.seed).name / "model.pt"
        steps["train"] = bundle_command(python, [*configs, *paper], **train, **extra)
    predict, score = {"checkpoint": checkpoint}, {"slices": SLICES, "dataset_dir": data}
    steps["inference"] = bundle_command(python, [INFERENCE, *paper], **predict, slices=SLICES, output_dir=out / "predictions",
                                        input_image=Path(data) / "epfl_hippocampus" / "training.tif")  # fmt: skip
    steps["evaluate"] = bundle_command(python, [EVALUATE], prediction_dir=out / "predictions", **score,
                                       output_dir=out / "scores")  # fmt: skip
    if args.test_image:
        image, truth = Path(args.test_image), Path(args.test_label)
        steps["test_inference"] = bundle_command(python, [INFERENCE, *paper], input_image=image, **predict,
                                                 output_dir=out / "test_predictions")  # fmt: skip
        steps["test_evaluate"] = bundle_command(python, [EVALUATE], prediction_dir=out / "test_predictions",
                                                label=truth, image=image, slices=None,
                                                output_dir=out / "test_scores")  # fmt: skip
    return steps


def plan(args: argparse.Namespace) -> list[Run]:
    """The runs to do, source models first; stops on a missing points file."""
    methods = list(dict.fromkeys(args.methods))
    if args.recipe == "paper" and any(FINETUNE in METHODS[m][0] for m in methods) and "noadapt" not in methods:
        methods.insert(0, "noadapt")  # the paper recipe's adaptations start from its own source model
    runs = []
    for method in sorted(methods, key=lambda m: m != "noadapt"):
        for seed in args.seeds:
            if not uses_points(method):
                reuse = method == "noadapt" and args.recipe == "cpu" and seed == 0 and args.reuse_source
                runs.append(Run(method, args.recipe, seed, reuse=reuse))
                continue
            for pct in args.points_fraction:
                for split in args.splits if points_file(args.dataset_dir, pct, 1).exists() else [None]:
                    path = points_file(args.dataset_dir, pct, split)
                    if not path.is_file():
                        found = " ".join(sorted(p.name for p in path.parent.glob("*.csv")))
                        _fail(f"{path}: no such points file; pick --points_fraction and --splits among: {found}")
                    runs.append(Run(method, args.recipe, seed, pct, split))
    return runs


def git_commit() -> tuple[str, bool]:
    """(short HEAD commit, whether tracked code, configs or models differ from it; docs/, which the report rewrites,
    do not count)."""
    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True).stdout.strip()

    changed = git("status", "--porcelain", "--untracked-files=no", "--", "bundle", "configs", "scripts", "models")
    return git("rev-parse", "--short", "HEAD") or "unknown", bool(changed)


def write_json(path: Path, data: Any, exclusive: bool = False) -> None:
    """Write JSON atomically (`atomic_output`); `exclusive`: FileExistsError rather than overwrite."""
    text = json.dumps(data, indent=2, default=str) + "\n"
    if not exclusive:
        with atomic_output(path) as tmp:
            tmp.write_text(text)
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    try:
        os.link(tmp, path)  # atomic, and fails where the file exists
    finally:
        tmp.unlink()


def read_metrics(path: Path) -> dict[str, float]:
    """The slice-mean metrics of a metrics.json."""
    data = json.loads(path.read_text())
    return {key: float(data[key]) for key in METRICS if key in data}


def execute(run: Run, steps: dict[str, list[str]], out: Path, args: argparse.Namespace) -> Result:
    """Do the steps of `run` from the first one not done with the same command, then write out/result.json."""
    out.mkdir(parents=True, exist_ok=True)
    with run_lock(out):
        if (out / "result.json").exists():  # finished by another benchmark process while this one waited
            return json.loads((out / "result.json").read_text())
        return _execute(run, steps, out, args)


def _execute(run: Run, steps: dict[str, list[str]], out: Path, args: argparse.Namespace) -> Result:
    """execute() under the run's lock."""
    progress_path = out / "progress.json"
    progress = json.loads(progress_path.read_text()) if progress_path.exists() else {"attempts": 0, "steps": {}}
    progress["attempts"] += 1
    write_json(progress_path, progress)
    (commit, dirty), rerun = git_commit(), False
    for step, command in steps.items():
        done = progress["steps"].get(step)
        if done and done["command"] == command and not rerun:
            continue
        rerun, start = True, time.monotonic()  # every later step is redone too (new model, new predictions)
        code, peak = run_command(command, out / f"{step}.log")
        if code != 0:
            raise StepFailed(f"{out}: step {step} exited with code {code}; see {out / f'{step}.log'}, fix and rerun")
        progress["steps"][step] = {"command": command, "wall_s": time.monotonic() - start, "peak_rss_bytes": peak,
                                   "commit": commit, "dirty": dirty}  # fmt: skip
        write_json(progress_path, progress)
    done = {step: progress["steps"][step] for step in steps}
    first = next(iter(done.values()))
    result = {
        "name": run.name, "method": run.method, "recipe": run.recipe, "seed": run.seed,
        "points_fraction": run.points, "split": run.split, "reused_checkpoint": SOURCE_MODEL if run.reuse else None,
        "metrics": read_metrics(out / "scores" / "metrics.json"),
        "test_metrics": read_metrics(out / "test_scores" / "metrics.json") if "test_evaluate" in done else None,
        "test_image": args.test_image, "test_label": args.test_label,
        "train_wall_s": done["train"]["wall_s"] if "train" in done else None,
        "run_wall_s": sum(step["wall_s"] for step in done.values()),
        "peak_rss_bytes": max(step["peak_rss_bytes"] for step in done.values()),
        "attempts": progress["attempts"], "steps": done, "commit": first["commit"], "dirty": first["dirty"],
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }  # fmt: skip
    try:
        write_json(out / "result.json", result, exclusive=True)
    except FileExistsError:  # another benchmark process finished this run meanwhile: keep its result
        return json.loads((out / "result.json").read_text())
    return result


def duration(seconds: float | None) -> str:
    """'14 min 0 s' ('–' for None)."""
    if seconds is None:
        return "–"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def label(result: Result, reused: bool = False) -> str:
    """Name of a run's method: 'wda 15 %'; with `reused`, 'noadapt (models/source_model.pt, not retrained)'."""
    points = "" if result.get("points_fraction") is None else f" {result['points_fraction']} %"
    note = f" ({result['reused_checkpoint']}, not retrained)" if reused and result.get("reused_checkpoint") else ""
    return result["method"] + points + note


def gap(dice: float, refs: tuple[float, float] | None) -> float | None:
    """% of the NoAdapt -> Oracle Dice gap closed (None without both references)."""
    return None if refs is None or refs[1] == refs[0] else 100.0 * (dice - refs[0]) / (refs[1] - refs[0])


def references(results: list[Result], recipe: str) -> tuple[float, float] | None:
    """(mean NoAdapt Dice, mean Oracle Dice) of a recipe, or None without both."""
    dice = [[r["metrics"]["dice"] for r in results if r["method"] == m and r["recipe"] == recipe]
            for m in ("noadapt", "oracle")]  # fmt: skip
    return (statistics.mean(dice[0]), statistics.mean(dice[1])) if dice[0] and dice[1] else None


def mean_std(values: list[float], fmt: str = "{:.3f}") -> str:
    """'mean ± std' (sample std) of two or more values."""
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


def groups(results: list[Result]) -> dict[tuple[str, str], list[Result]]:
    """Results grouped by (label, recipe), in method-table order, then points, split and seed."""
    def key(r: Result) -> tuple:
        order = list(METHODS).index(r["method"]) if r["method"] in METHODS else len(METHODS)
        return order, r["recipe"], r.get("points_fraction") or 0, r.get("split") or 0, r["seed"]

    out: dict[tuple[str, str], list[Result]] = {}
    for result in sorted(results, key=key):
        out.setdefault((label(result), result["recipe"]), []).append(result)
    return out


def table(results: list[Result]) -> list[str]:
    """Markdown table lines: one row per run, plus a mean ± std row per method with several runs."""
    test = any(r.get("test_metrics") for r in results)
    head = ["method", "recipe", "split", "seed", *METRICS.values(), "gap closed", *["test Dice"] * test]
    lines = ["| " + " | ".join(head + ["train wall time", "peak RSS", "commit"]) + " |", "|" + "---|" * (len(head) + 3)]
    for (name, recipe), rows in groups(results).items():
        refs = references(results, recipe)
        for r in rows:
            dice_gap = gap(r["metrics"]["dice"], refs)
            cells = [label(r, True), recipe, "–" if r.get("split") is None else str(r["split"]), str(r["seed"])]
            cells += [f"{r['metrics'][m]:.3f}" if m in r["metrics"] else "–" for m in METRICS]
            cells += ["–" if dice_gap is None else f"{dice_gap:.0f} %"]
            cells += [f"{r['test_metrics']['dice']:.3f}" if r.get("test_metrics") else "–"] * test
            attempts = f" ({r['attempts']} attempts)" if r.get("attempts", 1) > 1 else ""
            commit = r["commit"] + ("-dirty" if r.get("dirty") else "")
            cells += [duration(r.get("train_wall_s")) + attempts, f"{r['peak_rss_bytes'] / 1e9:.1f} GB", commit]
            lines.append("| " + " | ".join(cells) + " |")
        if len(rows) > 1:
            cells = [f"**{name}: mean ± std (n = {len(rows)})**", recipe, "", ""]
            for m in METRICS:
                values = [r["metrics"][m] for r in rows if m in r["metrics"]]
                cells.append(mean_std(values) if len(values) == len(rows) else "–")
            gaps = [gap(r["metrics"]["dice"], refs) for r in rows]
            cells.append("–" if refs is None else mean_std(gaps, "{:.0f}") + " %")  # type: ignore[arg-type]
            tests = [r["test_metrics"]["dice"] for r in rows if r.get("test_metrics")]
            cells += [mean_std(tests) if len(tests) > 1 else "–"] * test
            trains = [r["train_wall_s"] for r in rows if r.get("train_wall_s") is not None]
            cells += [duration(statistics.mean(trains)) if trains else "–", "", ""]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


Series = dict[str, list[tuple[float, float, float]]]  # name -> [(x, mean, std)]


def plot(path: Path, title: str, xs: list, series: Series, bars: bool) -> None:
    """PNG chart of Dice in [0, 1] with ± std whiskers: bars at category indices, or lines over numeric x."""
    from PIL import Image, ImageDraw, ImageFont

    font, black = ImageFont.load_default(), (0, 0, 0)
    width, height = (max(640, 120 + 60 * len(xs)), 560) if bars else (640, 400)
    left, top, right, bottom = 60, 40, width - 20, height - (230 if bars else 50)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)

    def to_xy(x: float, v: float) -> tuple[float, float]:
        """Pixel of (x, Dice)."""
        fx = (x + 0.5) / len(xs) if bars else 0.05 + 0.9 * x / max(max(xs), 1)
        return left + fx * (right - left), bottom - max(0.0, min(1.0, v)) * (bottom - top)

    draw.text((width / 2, 12), title, fill=black, font=font, anchor="mt")
    for tick in range(6):
        y = to_xy(0, tick / 5)[1]
        draw.line([(left, y), (right, y)], fill=(220, 220, 220))
        draw.text((left - 6, y), f"{tick / 5:.1f}", fill=black, font=font, anchor="rm")
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=black)
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]
    for k, (name, points) in enumerate(series.items()):
        colour, half = colours[k % len(colours)], 0.3 * (right - left) / len(xs)
        centres = [to_xy(x, m) for x, m, _ in sorted(points)]
        if not bars:
            draw.line(centres, fill=colour, width=2)
            draw.line([(right - 130, top + 10 + 16 * k), (right - 110, top + 10 + 16 * k)], fill=colour, width=3)
            draw.text((right - 105, top + 10 + 16 * k), name, fill=black, font=font, anchor="lm")
        for (cx, cy), (x, m, s) in zip(centres, sorted(points)):
            if bars:
                draw.rectangle([cx - half, cy, cx + half, bottom], fill=colour)
            else:
                draw.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill=colour)
            high = to_xy(x, m + s)[1]
            draw.line([(cx, to_xy(x, m - s)[1]), (cx, high)], fill=black, width=2)
            draw.text((cx, high - 3), f"{m:.3f}", fill=black, font=font, anchor="mb")
    for i, x in enumerate(xs):
        cx = to_xy(i if bars else x, 0)[0]
        if bars:  # category names turned by 90 degrees under the bars
            tag = Image.new("RGB", (224, 14), "white")
            ImageDraw.Draw(tag).text((222, 7), str(x), fill=black, font=font, anchor="rm")
            image.paste(tag.rotate(90, expand=True), (int(cx - 7), bottom + 4))
        else:
            draw.text((cx, bottom + 6), f"{x} %" + (" (uda)" if x == 0 else ""), fill=black, font=font, anchor="mt")
    draw.text((width / 2, height - 6), "" if bars else "% of the instances given as points", fill=black, font=font,
              anchor="mb")  # fmt: skip
    with atomic_output(path) as tmp:
        image.save(tmp, format="PNG")


def stats(values: list[float]) -> tuple[float, float]:
    """(mean, sample std; 0 for one value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def plots(results: list[Result], folder: Path) -> list[str]:
    """Write benchmark_dice.png (and benchmark_points.png when wda/uda runs exist) into `folder`; return the names."""
    grouped = groups(results)
    bars = [(i, *stats([r["metrics"]["dice"] for r in rows])) for i, rows in enumerate(grouped.values())]
    names = [f"{name} [{recipe}]" for name, recipe in grouped]
    plot(folder / "benchmark_dice.png", f"Dice on EPFL {SLICES} (mean ± std over runs)", names, {"Dice": bars}, True)
    series: Series = {}
    for recipe in sorted({r["recipe"] for r in results}):
        for suffix, pair in (("", ("uda", "wda")), (" source-free", ("uda_source_free", "wda_source_free"))):
            by_x: dict[int, list[float]] = {}
            for r in results:
                if r["recipe"] == recipe and r["method"] in pair:
                    by_x.setdefault(r.get("points_fraction") or 0, []).append(r["metrics"]["dice"])
            if by_x:
                series[recipe + suffix] = [(x, *stats(dice)) for x, dice in sorted(by_x.items())]
    if not series:
        return ["benchmark_dice.png"]
    xs = sorted({x for points in series.values() for x, _, _ in points})
    plot(folder / "benchmark_points.png", f"Dice on EPFL {SLICES} vs points (wda; 0 % = uda)", xs, series, False)
    return ["benchmark_dice.png", "benchmark_points.png"]


def load_results(runs_dir: Path) -> list[Result]:
    """Every finished run's result.json under `runs_dir`."""
    return [json.loads(p.read_text()) for p in sorted(runs_dir.glob("*/result.json"))] if runs_dir.is_dir() else []


def report_block(results: list[Result], images: list[str]) -> str:
    """The generated markdown block, markers included."""
    lines = [
        BEGIN,
        "## Benchmark (generated by `python scripts/benchmark.py`; edits inside this block are overwritten)",
        "",
        f"EPFL hippocampus slices {SLICES}, slice means. Gap closed = (Dice − NoAdapt) / (Oracle − NoAdapt)"
        " with the mean NoAdapt and Oracle Dice of the same recipe; mean ± sample std over seeds and splits."
        " Train wall time: the training step's last attempt; peak RSS: the largest process of the run."
        " CPU-recipe adaptations start from `models/source_model.pt`.",
        "",
        *(table(results) if results else ["No finished runs yet."]),
        "",
        *[f"![{name}]({name})" for name in images],
        END,
    ]
    return "\n".join(lines)


def write_report(results_path: Path, block: str) -> None:
    """Replace the generated block of `results_path` (append it if missing); every other byte stays; atomic."""
    text = results_path.read_bytes().decode() if results_path.exists() else ""
    start, end = text.find(BEGIN), text.find(END)
    if 0 <= start < end:
        text = text[:start] + block + text[end + len(END) :]
    else:
        text += ("" if not text or text.endswith("\n\n") else "\n" if text.endswith("\n") else "\n\n") + block + "\n"
    with atomic_output(results_path) as tmp:
        tmp.write_bytes(text.encode())


def report(args: argparse.Namespace) -> None:
    """Rebuild the results block and the plots from the finished runs."""
    results = load_results(args.runs_dir)
    images = plots(results, args.results.parent) if results else []
    write_report(args.results, report_block(results, images))
    print(f"report: {len(results)} finished runs -> {args.results}" + "".join(f", {i}" for i in images))


def parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    venv = REPO / ".venv" / "bin" / "python"
    p = _Parser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=["noadapt"], help=f"any of: {' '.join(METHODS)}")
    p.add_argument("--recipe", choices=["cpu", "paper"], default="cpu")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--splits", nargs="+", type=int, default=[1], help="splits of the 15 %% points (1-5)")
    p.add_argument("--points_fraction", nargs="+", type=int, default=[15], help="%% points: 5 15 30 50")
    p.add_argument("--reuse_source", action=argparse.BooleanOptionalAction, default=True,
                   help=f"noadapt, CPU recipe, seed 0: evaluate {SOURCE_MODEL}, no training")  # fmt: skip
    p.add_argument("--runs_dir", type=Path, default=REPO / "runs" / "benchmark")
    p.add_argument("--dataset_dir", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--test_image", help="also predict this whole volume ...")
    p.add_argument("--test_label", help="... and score it against these labels (instances or an 8-bit mask)")
    p.add_argument("--results", type=Path, default=REPO / "docs" / "results.md")
    p.add_argument("--python", default=str(venv) if venv.exists() else sys.executable, help="runs the bundle")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry_run", action="store_true", help="print the commands only")
    mode.add_argument("--report_only", action="store_true", help="rebuild the table and plots from finished runs")
    return p


def check(args: argparse.Namespace) -> None:
    """Stop with one line on bad arguments."""
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        _fail(f"unknown method {' '.join(unknown)}; pick among: {' '.join(METHODS)}")
    args.runs_dir, args.results = args.runs_dir.expanduser().resolve(), args.results.expanduser().resolve()
    if args.results.is_dir():
        _fail(f"{args.results}: is a folder; pass the markdown file to write the results table into")
    if not args.results.parent.is_dir():
        _fail(f"{args.results.parent}: no such folder; create it or pass another --results")
    if args.runs_dir.exists() and not args.runs_dir.is_dir():
        _fail(f"{args.runs_dir}: is a file; pass a folder as --runs_dir")
    if args.report_only:
        return
    if args.recipe == "paper" and any(source_free(m) for m in args.methods):
        _fail("source-free methods need the prototypes of their source model, and only the CPU recipe's has them "
              "(models/source_prototypes.pt); drop them or use --recipe cpu")  # fmt: skip
    args.dataset_dir = args.dataset_dir.expanduser().resolve()
    if not (args.dataset_dir / "epfl_hippocampus" / "training.tif").is_file():
        _fail(f"{args.dataset_dir}: not a data root (no epfl_hippocampus/training.tif); pass --dataset_dir")
    if bool(args.test_image) != bool(args.test_label):
        _fail("--test_image and --test_label go together; pass both or neither")
    for option in ("test_image", "test_label"):
        if getattr(args, option):
            path = Path(getattr(args, option)).expanduser().resolve()
            if not path.exists():
                _fail(f"{path}: no such file or folder; check --{option}")
            setattr(args, option, str(path))
    needs_source = any(FINETUNE in METHODS[m][0] for m in args.methods) or (args.reuse_source and "noadapt" in args.methods)
    if args.recipe == "cpu" and needs_source and not (REPO / SOURCE_MODEL).is_file():
        _fail(f"{REPO / SOURCE_MODEL}: missing (the CPU recipe's source model); restore it with git checkout")


def tag(i: int, n: int, start: float, name: str) -> str:
    """'[i/n elapsed] name:' for the progress lines."""
    return f"[{i}/{n} {duration(time.monotonic() - start)}] {name}:"


def main(argv: list[str] | None = None) -> int:
    """Run (or print) the planned runs, then rebuild the report; return the exit code."""
    args = parser().parse_args(argv)
    check(args)
    if args.report_only:
        report(args)
        return 0
    runs, start, failed = plan(args), time.monotonic(), []
    for i, run in enumerate(runs, 1):
        out, steps = args.runs_dir / run.name, run_steps(run, args)
        finished = (out / "result.json").exists()
        if args.dry_run:
            print(f"# {run.name}" + (" (finished: skipped)" if finished else ""))
            print("\n".join(shown(command) for command in steps.values()))
            continue
        if finished:
            print(f"{tag(i, len(runs), start, run.name)} skip (finished: {out / 'result.json'})", flush=True)
            continue
        print(f"{tag(i, len(runs), start, run.name)} start -> {out}", flush=True)
        try:
            result = execute(run, steps, out, args)
        except StepFailed as exc:
            print(f"mitoda: error: {exc}", file=sys.stderr, flush=True)
            failed.append(run.name)
            continue
        except RunBusy as exc:
            print(f"{tag(i, len(runs), start, run.name)} skip ({exc})", flush=True)
            continue
        times = f"train {duration(result['train_wall_s'])}, run {duration(result['run_wall_s'])}"
        dice, peak = result["metrics"]["dice"], result["peak_rss_bytes"] / 1e9
        print(f"{tag(i, len(runs), start, run.name)} finished, Dice {dice:.3f} ({times}, peak RSS {peak:.1f} GB)",
              flush=True)  # fmt: skip
    if args.dry_run:
        return 0
    report(args)
    if failed:
        print(f"mitoda: error: {len(failed)} runs failed ({' '.join(failed)}); see their logs", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

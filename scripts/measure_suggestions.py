"""Measure "where to click next": Dice after adding k suggested clicks vs k random instance centres vs none.

    python scripts/measure_suggestions.py --k 40 --output_dir runs/suggest [--points 15pct_split1.csv]
        [--checkpoint models/model.pt] [--slices 0-119:3] [--eval_slices 120-164] [--num_iterations 400]
        [--learning_rate 3e-4] [--omega 0.95] [--beta 0.8] [--seed 0] [--arms control,suggested,random]

1. scripts/suggest_clicks.py ranks the --slices (the adaptation's target slices) with --checkpoint and the points.
2. A simulated user: each suggestion lying on a true instance (--label) without a click yet gets a click at that
   instance's centre (distance-transform maximum); any other suggestion is a wasted click. Baseline: k random
   unclicked true instances of the same slices (seeded), clicked at their centres. Both are added to --points.
3. Each arm continues the adaptation from --checkpoint for a short schedule (configs/finetune.yaml + adapt_wda.yaml, one
   pseudo-label round in the regime of the last round: Ω = 95 % of the peaks, β = 0.8 of new detection points,
   Adam from 3e-4 = the poly rate of the original run's last epoch), then predicts and scores --eval_slices.
   Arms: control (no added points), suggested, random. Prints arm, k, useful clicks, Dice, IoU, AJI, PQ.

Resumable: an arm whose scores/metrics.json exists is skipped, a killed training resumes from its checkpoints,
and finished steps are not run again. Layout: OUT/control/, OUT/k{K}/{suggestions.csv, points_*.csv, clicks.json,
suggested/, random/}, OUT/k{K}/results.json; each arm folder holds the adaptation run, predictions/, scores/, *.log.
Bad input prints one line 'mitoda: error: ...' on stderr and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import numpy as np  # noqa: E402

from bundle.data.io import parse_slices  # noqa: E402
from bundle.errors import OneLineParser as _Parser, fail as _fail  # noqa: E402

ARMS = ("control", "suggested", "random")
SETTINGS = ("image", "label", "points", "checkpoint", "slices", "eval_slices", "num_iterations", "learning_rate", "omega",
            "beta", "seed", "per_slice")


def _parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    data = "../shared/data/epfl_hippocampus"
    parser = _Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=40, help="clicks to add (default 40: one per target slice)")
    parser.add_argument("--output_dir", required=True, help="folder of the arms (reused: finished arms are skipped)")
    parser.add_argument("--dataset_dir", default="../shared/data", help="data root for the bundle configs")
    parser.add_argument("--image", default=f"{data}/training.tif")
    parser.add_argument("--label", default=f"{data}/training_instances.tif", help="true instances (the simulated user)")
    parser.add_argument("--points", default=f"{data}/points/15pct_split1.csv", help="points clicked so far")
    parser.add_argument("--checkpoint", default="models/model.pt", help="adapted model to rank with and continue from")
    parser.add_argument("--slices", default="0-119:3", help="target slices of the adaptation (default 0-119:3)")
    parser.add_argument("--eval_slices", default="120-164", help="scored slices (default 120-164)")
    parser.add_argument("--num_iterations", type=int, default=400, help="continuation length (default 400)")
    parser.add_argument("--learning_rate", type=float, default=3e-4, help="Adam rate, poly decay (default 3e-4)")
    parser.add_argument("--omega", type=float, default=0.95, help="IPL Ω share of the round (default 0.95)")
    parser.add_argument("--beta", type=float, default=0.8, help="share of new detection pseudo-points (default 0.8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random arm (default 0)")
    parser.add_argument("--per-slice", type=int, default=None, help="suggest_clicks.py --per-slice")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of control,suggested,random")
    return parser


# ----------------------------------------------------------------------------------------------------------- clicks
def instance_centre(labels: np.ndarray, label_id: int) -> tuple[int, int]:
    """(y, x) distance-transform maximum of instance `label_id` of a 2D label map (as simulated points)."""
    from bundle.data.density import instance_centres

    y, x = instance_centres((labels == label_id).astype(np.int32))[0]
    return int(y), int(x)


def simulated_user(suggestions: np.ndarray, truth: np.ndarray, clicked: set[tuple[int, int]]) -> tuple[np.ndarray, int]:
    """Clicks (N, 3) at the centres of the unclicked true instances under the suggestions, and the wasted count."""
    clicked, out, wasted = set(clicked), [], 0
    for z, y, x in suggestions.tolist():
        label_id = int(truth[z][y, x])
        if label_id == 0 or (z, label_id) in clicked:
            wasted += 1
            continue
        clicked.add((z, label_id))
        out.append((z, *instance_centre(truth[z], label_id)))
    return np.asarray(out, dtype=np.int64).reshape(-1, 3), wasted


def random_clicks(truth: dict[int, np.ndarray], clicked: set[tuple[int, int]], k: int, seed: int) -> np.ndarray:
    """(k, 3) centres of k random unclicked true instances of the given slices (seeded)."""
    pool = [(z, int(i)) for z, labels in sorted(truth.items()) for i in np.unique(labels) if i]
    pool = [item for item in pool if item not in clicked]
    if len(pool) < k:
        _fail(f"only {len(pool)} unclicked true instances on the target slices; pass --k {len(pool)} or fewer")
    chosen = np.random.default_rng(seed).choice(len(pool), size=k, replace=False)
    picked = [pool[i] for i in sorted(chosen)]
    return np.asarray([(z, *instance_centre(truth[z], label_id)) for z, label_id in picked], dtype=np.int64)


def make_points(args: argparse.Namespace, work: Path, slices: list[int]) -> dict:
    """Suggestions, simulated clicks and the two new points files in `work` (kept when already there)."""
    from bundle.data.io import read_label_instances
    from bundle.data.points import read_points, write_points

    summary_path = work / "clicks.json"
    if summary_path.is_file():
        return json.loads(summary_path.read_text())
    suggestions = work / "suggestions.csv"
    if not suggestions.is_file():
        command = ["--image", args.image, "--points", args.points, "--checkpoint", args.checkpoint, "--k", str(args.k),
                   "--slices", ",".join(map(str, slices)), "--output", str(suggestions)]  # fmt: skip
        command += ["--per-slice", str(args.per_slice)] if args.per_slice else []
        _step("suggest", [sys.executable, str(REPO / "scripts" / "suggest_clicks.py"), *command], work / "suggest.log")
    volume = read_label_instances(args.label)
    truth = {z: np.asarray(volume[z]) for z in slices}
    del volume
    base = read_points(args.points)
    clicked = {(z, int(truth[z][y, x])) for z, y, x in base.tolist() if z in truth and truth[z][y, x]}
    proposed = read_points(suggestions)
    added, wasted = simulated_user(proposed, truth, clicked)
    chosen = random_clicks(truth, clicked, args.k, args.seed)
    write_points(work / "points_suggested.csv", np.concatenate([base, added]) if len(added) else base)
    write_points(work / "points_random.csv", np.concatenate([base, chosen]))
    summary = {"k": args.k, "suggested_useful": len(added), "suggested_wasted": wasted, "random_useful": len(chosen),
               "base_points": len(base), "base_instances_clicked": len(clicked)}  # fmt: skip
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# ----------------------------------------------------------------------------------------------------------- arms
def _step(name: str, command: list[str], log: Path) -> None:
    """Run one step from the repository root with its output in `log`; a failure stops with one line."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[{name}] {' '.join(command[1:])}  (log: {log})", flush=True)
    with open(log, "a") as handle:
        code = subprocess.run(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT).returncode
    if code:
        print(f"mitoda: error: {log}: step '{name}' failed (exit code {code}); see the end of that log", file=sys.stderr)
        raise SystemExit(1)


def run_arm(args: argparse.Namespace, arm_dir: Path, points: str, slices: list[int]) -> dict:
    """Continue the adaptation with `points`, predict and score; every finished step is skipped."""
    metrics = arm_dir / "scores" / "metrics.json"
    bundle = [sys.executable, "-m", "monai.bundle", "run", "--dataset_dir", args.dataset_dir]
    if not metrics.is_file():
        if not (arm_dir / "trained").is_file():
            _step("adapt", [*bundle, "--config_file", "['configs/train.yaml','configs/finetune.yaml','configs/adapt_wda.yaml']",
                  "--source_checkpoint", args.checkpoint, "--target_points", points, "--target_slices", str(slices),
                  "--num_iterations", str(args.num_iterations), "--val_interval", str(args.num_iterations),
                  "--num_rounds", "1", "--omega_fractions", f"[{args.omega}]", "--beta", str(args.beta),
                  "--learning_rate", str(args.learning_rate), "--val_slices", args.eval_slices,
                  "--output_dir", str(arm_dir)], arm_dir / "adapt.log")  # fmt: skip
            (arm_dir / "trained").write_text("done\n")
        if not (arm_dir / "predictions" / "instances.tif").is_file():
            _step("predict", [*bundle, "--config_file", "configs/inference.yaml", "--input_image", args.image,
                  "--checkpoint", str(arm_dir / "model.pt"), "--slices", args.eval_slices,
                  "--output_dir", str(arm_dir / "predictions")], arm_dir / "inference.log")  # fmt: skip
        _step("evaluate", [*bundle, "--config_file", "configs/evaluate.yaml", "--label", args.label,
              "--prediction_dir", str(arm_dir / "predictions"), "--slices", args.eval_slices,
              "--output_dir", str(arm_dir / "scores")], arm_dir / "evaluate.log")  # fmt: skip
    return json.loads(metrics.read_text())


def _absolute(path: str) -> str:
    """`path` made absolute from the current directory (the steps run from the repository root)."""
    return str(Path(path).expanduser().resolve())


def _check_settings(out: Path, settings: dict) -> None:
    """Record the schedule in OUT/settings.json; a rerun with other settings would mix arms, so it stops."""
    path = out / "settings.json"
    old = json.loads(path.read_text()) if path.is_file() else settings
    changed = [f"{key} {old.get(key)!r} -> {value!r}" for key, value in settings.items() if old.get(key) != value]
    if changed:
        _fail(f"{path}: this folder was measured with other settings ({'; '.join(changed)}); pass a new --output_dir")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Run (or resume) every arm and print the table."""
    args = _parser().parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if not arms or any(a not in ARMS for a in arms):
        _fail(f"--arms '{args.arms}' must list some of {','.join(ARMS)}")
    if args.k < 1 or args.num_iterations < 1:
        _fail(f"--k {args.k} and --num_iterations {args.num_iterations} must be >= 1")
    if not (0.0 <= args.omega <= 1.0 and 0.0 <= args.beta <= 1.0 and args.learning_rate > 0):
        _fail(f"--omega {args.omega}, --beta {args.beta} must be in [0, 1], --learning_rate {args.learning_rate} > 0")
    for name in ("image", "label", "points", "checkpoint", "dataset_dir"):
        setattr(args, name, _absolute(getattr(args, name)))
        if not Path(getattr(args, name)).exists():
            _fail(f"{getattr(args, name)}: --{name} does not exist; check the path")
    out = Path(args.output_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        _fail(f"{out}: --output_dir is a file; pass a folder")

    from bundle.data.io import SliceVolume
    from bundle.errors import InputError

    try:
        with SliceVolume(args.image) as volume:
            depth = int(volume.shape[0])
        slices = parse_slices(args.slices, depth, "--slices")
        parse_slices(args.eval_slices, depth, "--eval_slices")
    except InputError as exc:
        _fail(str(exc))
    _check_settings(out, {key: getattr(args, key) for key in SETTINGS})
    work = out / f"k{args.k}"
    work.mkdir(parents=True, exist_ok=True)
    clicks = make_points(args, work, slices) if {"suggested", "random"} & set(arms) else {}
    points = {"control": args.points, **{arm: str(work / f"points_{arm}.csv") for arm in ("suggested", "random")}}
    folders = {"control": out / "control", "suggested": work / "suggested", "random": work / "random"}
    rows = []
    for arm in arms:
        scores = run_arm(args, folders[arm], points[arm], slices)
        useful = {"control": 0, "suggested": clicks.get("suggested_useful"), "random": clicks.get("random_useful")}[arm]
        rows.append({"arm": arm, "k": 0 if arm == "control" else args.k, "useful": useful,
                     **{m: scores[m] for m in ("dice", "iou", "aji", "pq")}})  # fmt: skip
    results = {"settings": vars(args), "clicks": clicks, "rows": rows}
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print("| arm | k | useful clicks | Dice | IoU | AJI | PQ |\n|---|---|---|---|---|---|---|")
    for r in rows:
        scores = " | ".join(f"{r[m]:.4f}" for m in ("dice", "iou", "aji", "pq"))
        print(f"| {r['arm']} | {r['k']} | {r['useful']} | {scores} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

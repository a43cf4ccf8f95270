"""Fine-tune the shipped source model on your own EM volume from point clicks, then predict the whole volume.

Example (docs/finetune.md walks through it on the EPFL volume):
    python scripts/finetune.py --target_image VOL --points POINTS.csv --output_dir DIR \
        [--slices 0-119] [--pixel_size NM] [--holdout_clicks 0.2] [--with_source | --source_image IMG --source_label LBL] \
        [--val_label LBL --val_slices 120-164] \
        [--checkpoint models/source_model.pt] [--num_iterations 1600] [--KEY VALUE ...]

Source-free by default (configs/finetune.yaml, the shipped recipe: target batches only, the source model's fixed
prototypes in the contrastive loss); with source data, configs/adapt_wda.yaml added after it. A share of the
clicks (--holdout_clicks) is held out of training to check every round without labels (`--points none`: no clicks,
unsupervised adaptation, configs/adapt_uda.yaml added; its checks are the counts only); without --val_label the
model of the last epoch is the result, unless an earlier round's found clearly more held-out clicks. A volume at
another pixel size than the model's is adapted at the model's scale. Writes DIR/model.pt,
DIR/predictions/{probability,density,instances}.tif, DIR/inputs/ and DIR/finetune.json (settings, timings and the
checks); running the same command again continues an interrupted run. Any other --KEY VALUE overrides that config
value of the adaptation (e.g. --tta_views 5). Bad input prints one line 'mitoda: error: ...' on stderr, exits with
code 2 and creates nothing.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CONFIGS = REPO / "configs"
SETTINGS_FILE = "finetune.json"
RECORDED_ONLY = ("input_image", "pixel_size", "model_scale")  # settings finetune.json records, no config takes


from bundle.errors import OneLineParser as _Parser, fail as _fail  # noqa: E402

if TYPE_CHECKING:
    from bundle.data.target import AdaptationInputs  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = _Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--target_image", required=True, help="your EM volume (Z, Y, X): TIFF, folder, NIfTI, HDF5")
    parser.add_argument("--points", required=True, help="clicks on mitochondria: CSV z,y,x or a napari Points export; "
                        "'none': no clicks, unsupervised adaptation (configs/adapt_uda.yaml)")  # fmt: skip
    parser.add_argument("--output_dir", required=True, help="folder for model.pt, predictions/ and the run's files")
    parser.add_argument("--slices", default=None, help="slices to adapt on, e.g. '0-119' (default: all)")
    parser.add_argument("--pixel_size", default=None,
                        help="nm per pixel of --target_image (8, or y,x); default: the file's, else the model's 4.6")  # fmt: skip
    parser.add_argument("--source_image", default=None, help="labelled source volume (with --source_label)")
    parser.add_argument("--source_label", default=None, help="its labels: instances or an 8-bit mask")
    parser.add_argument("--with_source", action="store_true", help="use VNC III under --dataset_dir as the source")
    parser.add_argument("--dataset_dir", default=str(REPO.parent / "shared" / "data"), help="data root (VNC III)")
    parser.add_argument("--val_label", default=None, help="labels of some target slices: validate, keep the best model")
    parser.add_argument("--val_slices", default=None, help="slices to validate on, e.g. '120-164' (default: all)")
    parser.add_argument("--checkpoint", default=str(REPO / "models" / "source_model.pt"), help="model to start from")
    parser.add_argument("--source_prototypes", default=str(REPO / "models" / "source_prototypes.pt"),
                        help="source-free: prototypes of --checkpoint (scripts/source_prototypes.py)")  # fmt: skip
    parser.add_argument("--num_iterations", type=int, default=1600, help="training iterations (default 1600)")
    parser.add_argument("--val_interval", type=int, default=400, help="iterations per epoch = per pseudo-label round")
    parser.add_argument("--num_rounds", type=int, default=4, help="pseudo-label rounds, one per epoch (default 4)")
    parser.add_argument("--holdout_clicks", type=float, default=0.2,
                        help="share of the clicks held out of training to check each round (default 0.2; 0: none)")  # fmt: skip
    return parser


def _overrides(extra: list[str]) -> dict[str, Any]:
    """`--KEY VALUE` pairs as config overrides; values are Python literals when they parse, else strings."""
    if len(extra) % 2 or not all(k.startswith("--") and len(k) > 2 for k in extra[::2]):
        _fail(f"unrecognised arguments {' '.join(extra)}; config overrides are --KEY VALUE pairs (see --help)")
    values = {}
    for key, text in zip(extra[::2], extra[1::2]):
        try:
            values[key[2:]] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            values[key[2:]] = text
    return values


def _absolute(path: str | None) -> str | None:
    """A user path made absolute (the runs start from the repository root)."""
    return path if not path or not path.strip() else os.path.abspath(os.path.expanduser(path))


def check_inputs(args: argparse.Namespace, extra: dict[str, Any]) -> tuple[dict[str, Any], AdaptationInputs]:
    """Read and check every input before anything is written; return the adaptation's config overrides and what
    `write_adaptation_inputs` writes once the output folder is claimed."""
    import numpy as np
    import torch

    from bundle.data.dataset import check_data_root, normalize_slice
    from bundle.data.io import check_same_shape, parse_slices, read_label_instances, read_volume
    from bundle.data.pixel_size import model_scale, scaled_shape
    from bundle.data.points import points_in_slices, read_points, validate_points
    from bundle.data.target import AdaptationInputs, check_polarity, split_clicks
    from bundle.errors import input_error
    from bundle.handlers.prototype_bank import load_source_prototypes
    from bundle.handlers.resume import latest_checkpoint
    from bundle.networks import MultiTaskUNet, checkpoint_sha256, load_checkpoint
    from bundle.outputs import check_output_dir

    latest_checkpoint(check_output_dir(args.output_dir, [SETTINGS_FILE, "model.pt"]) / "checkpoints")  # weights-only
    volume = read_volume(args.target_image)
    factors = model_scale(args.target_image, args.pixel_size)
    crop = int(np.max(extra.get("crop_size", 256)))
    if min(scaled_shape(volume.shape, factors)) < crop:
        raise input_error(
            args.target_image,
            f"slices of (Y, X) = {volume.shape[1:]} are smaller than the {crop}x{crop} training crop "
            f"(the volume is read as (Z, Y, X) = {volume.shape})",
            "store the volume with its slices on the first axis, (Z, Y, X): a (Y, X, Z) stack reads as Y thin slices",
        )
    for z, image in enumerate(volume):  # a blank or NaN slice would stop the run later (training or prediction)
        normalize_slice(image, args.target_image, z)
    slices = parse_slices(args.slices, volume.shape[0], path="--slices")
    points = np.zeros((0, 3), np.int64) if args.points is None else read_points(args.points)
    if args.points is not None:
        validate_points(points, volume.shape, path=args.points)
    if args.points is not None and not len(points_in_slices(points, slices)):
        problem = f"none of its {len(points)} points lies on the adapted slices ({args.slices or 'all'})"
        raise input_error(args.points, problem, "pass --slices that hold points")
    network = load_checkpoint(MultiTaskUNet(in_channels=1, width=int(extra.get("width", 16))), args.checkpoint)
    overrides: dict[str, Any] = {
        "target_image": args.target_image, "target_points": args.points, "target_slices": args.slices or "all",
        "input_image": args.target_image, "pixel_size": args.pixel_size, "model_scale": list(factors),
        "source_checkpoint": args.checkpoint, "output_dir": args.output_dir, "dataset_dir": args.dataset_dir,
        "num_iterations": args.num_iterations, "val_interval": args.val_interval, "num_rounds": args.num_rounds,
        "validation": args.val_label is not None,
    }  # fmt: skip
    if args.val_label is not None:
        labels = read_label_instances(args.val_label)
        check_same_shape(volume, labels, args.target_image, args.val_label)
        val_slices = parse_slices(args.val_slices, volume.shape[0], path="--val_slices")
        if set(val_slices) & set(slices):
            print("mitoda: warning: --val_slices overlap the adapted --slices: validation scores are not independent")
        overrides.update(val_image=args.target_image, val_label=args.val_label, val_slices=args.val_slices or "all")
    on_slices = points[np.isin(points[:, 0], slices)]
    if args.points is None:
        print("mitoda: no clicks (--points none): unsupervised adaptation; the contrast's polarity is not checked and "
              "no clicks are held out, so the checks are the instance and density counts only", flush=True)  # fmt: skip
        train, holdout = on_slices, on_slices
    else:
        check_polarity(volume, on_slices, args.points)
        train, holdout = split_clicks(on_slices, args.holdout_clicks)
    inputs = AdaptationInputs(factors, volume, train, holdout, labels if args.val_label is not None else None)
    if args.source_image is not None:
        source, source_label = read_volume(args.source_image), read_label_instances(args.source_label)
        check_same_shape(source, source_label, args.source_image, args.source_label)
        # every path is given: the data root only has to exist (adapt_wda.yaml's prepare checks it)
        overrides.update(source_image=args.source_image, source_label=args.source_label,
                         dataset_dir=str(Path(args.source_image).parent))  # fmt: skip
    elif args.with_source:
        check_data_root(args.dataset_dir)
    else:
        prototypes = load_source_prototypes(args.source_prototypes)
        made_for = torch.load(args.source_prototypes, map_location="cpu", weights_only=True).get("checkpoint_sha256")
        if made_for != checkpoint_sha256(args.checkpoint):
            fix = f"run: python scripts/source_prototypes.py --checkpoint {args.checkpoint} --output PATH"
            raise input_error(args.source_prototypes, f"was computed for another model than {args.checkpoint}", fix)
        if len(prototypes["source_fg"]) != network.feature_channels:
            raise input_error(args.source_prototypes, "does not fit the network's feature width", "recompute it")
        overrides["source_prototypes"] = args.source_prototypes
    return {**overrides, **extra}, inputs


def _configs(source_free: bool, clicks: bool = True) -> list[str]:
    """The adaptation's config files, in order."""
    names = ["train", "finetune"] + ([] if source_free else ["adapt_wda"]) + ([] if clicks else ["adapt_uda"])
    return [str(CONFIGS / f"{name}.yaml") for name in names]


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write `data` as JSON atomically (a kill never leaves half a file)."""
    from bundle.outputs import atomic_output

    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def _record(output: Path, settings: dict[str, Any]) -> None:
    """Write DIR/finetune.json, or check that a resumed run has the same settings (else one-line InputError)."""
    from bundle.errors import input_error

    path, settings = output / SETTINGS_FILE, json.loads(json.dumps(settings))  # compared as JSON stores them
    if path.is_file():
        old = json.loads(path.read_text()).get("settings", {})
        changed = sorted(k for k in {*old, *settings} if old.get(k) != settings.get(k))
        if changed:
            raise input_error(output, f"holds a run with other settings ({', '.join(changed[:4])} differ)",
                              "run the same command to continue it, or pass a new --output_dir")  # fmt: skip
    _write_json(path, {"settings": settings})


def run_step(name: str, step: Callable[[], Any], timings: dict[str, float]) -> None:
    """Run one step of the fine-tune, timed; an InputError the up-front checks missed stays one line."""
    from bundle.errors import find_input_error

    begin = time.perf_counter()
    try:
        step()
    except Exception as exc:
        if find_input_error(exc) is None:
            raise
        _fail(str(find_input_error(exc)))
    timings[name] = time.perf_counter() - begin
    print(f"mitoda: {name} took {timings[name]:.1f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the tool; return the exit code."""
    args, extra = _parser().parse_known_args(argv)
    overrides = _overrides(extra)
    from bundle.overrides import unknown_override

    source_free = args.source_image is None and not args.with_source
    clicks = args.points.strip().lower() != "none"
    configs = _configs(source_free, clicks)
    if (error := unknown_override(overrides, configs)) is not None:
        _fail(str(error))
    if (args.source_image is None) != (args.source_label is None):
        _fail("pass --source_image and --source_label together (or --with_source for VNC III, or neither: source-free)")
    if args.with_source and args.source_image is not None:
        _fail("pass either --with_source or --source_image/--source_label, not both")
    if args.val_slices is not None and args.val_label is None:
        _fail("--val_slices needs --val_label (the labels of those slices)")
    if not 0 <= args.holdout_clicks < 1:
        _fail(f"--holdout_clicks {args.holdout_clicks}: a share of the clicks from 0 (none held out) to below 1, e.g. 0.2")
    from bundle.errors import InputError
    from bundle.losses import check_weight, source_weight_schedule
    from bundle.pseudo_labels.rounds import RoundRule

    try:  # the configs' own checks (their `prepare`), here before anything is written
        RoundRule(**{key: overrides[key] for key in ("outline_margin", "snap_to_membranes", "match_class_prior",
                                                      "density_confirms_background") if key in overrides})
        source_weight_schedule(overrides.get("source_weight_end", 1.0), overrides.get("source_weight_end_iteration", 0))
        check_weight("source_lambda_density", overrides.get("source_lambda_density", 1.0), "the source density L2 weight")
    except InputError as error:
        _fail(f"--{error}")
    if min(args.num_iterations, args.val_interval, args.num_rounds) < 1 or args.num_iterations < args.val_interval:
        _fail("--num_iterations >= --val_interval >= 1 and --num_rounds >= 1 are needed")
    for name in ("target_image", "points", "output_dir", "source_image", "source_label", "dataset_dir",
                 "val_label", "checkpoint", "source_prototypes"):  # fmt: skip
        setattr(args, name, _absolute(getattr(args, name)) if name != "points" or clicks else None)
    # IPL's confident peaks per round; without clicks round 1 starts from the source model's own (configs/adapt_uda.yaml)
    overrides.setdefault("omega_fractions", [0.0 if clicks else 0.5, 0.5, 0.95, 0.95, *[0.95] * max(args.num_rounds - 4, 0)])

    from bundle.data.io import parse_slices
    from bundle.data.target import adaptation_checks, write_adaptation_inputs
    from bundle.outputs import claim_output_dir

    timings: dict[str, float] = {}
    start = time.perf_counter()
    try:
        settings, inputs = check_inputs(args, overrides)
        claim_output_dir(args.output_dir)
        settings.update(write_adaptation_inputs(Path(args.output_dir) / "inputs", *inputs))
        _record(Path(args.output_dir), {**settings, "configs": [Path(c).name for c in configs]})
    except InputError as exc:
        _fail(str(exc))
    timings["check inputs"] = time.perf_counter() - start
    kind = f"{'source-free' if source_free else 'with-source'}{'' if clicks else ', unsupervised (no clicks)'}"
    print(f"mitoda: {kind} fine-tuning into {args.output_dir}", flush=True)

    import monai.bundle

    os.chdir(REPO)  # configs and bundle_root "." are relative to the repository root
    output = Path(args.output_dir)
    steps = {
        "adapt": lambda: monai.bundle.run(config_file=configs,
                                          **{k: v for k, v in settings.items() if k not in RECORDED_ONLY}),
        "predict": lambda: monai.bundle.run(
            config_file=str(CONFIGS / "inference.yaml"), input_image=args.target_image,
            checkpoint=str(output / "model.pt"), output_dir=str(output / "predictions"),
            width=settings.get("width", 16), pixel_size=args.pixel_size, threads=settings.get("threads"),
            runtime=settings.get("runtime", "auto"),
        ),
    }  # fmt: skip
    for name, step in steps.items():
        run_step(name, step, timings)
    timings["total"] = time.perf_counter() - start
    record = json.loads((output / SETTINGS_FILE).read_text())
    slices = parse_slices(args.slices, len(inputs.image), path="--slices")
    checks = adaptation_checks(output, output / "predictions", slices, inputs.holdout_clicks)
    if checks["best_round"] is not None:  # an earlier round's model found more held-out clicks: keep that one
        kept = output / "pseudo_labels" / f"round_{checks['best_round'] - 1}" / "model.pt"
        os.replace(output / "model.pt", output / "model_last_epoch.pt")
        shutil.copyfile(kept, output / "model.pt")
        print(f"mitoda: kept the model of round {checks['best_round']} ({kept}): more held-out clicks found than by "
              "the last epoch's (model_last_epoch.pt); predicting again", flush=True)
        run_step("predict again", steps["predict"], timings)
        checks = {**adaptation_checks(output, output / "predictions", slices, inputs.holdout_clicks),
                  "kept_round": checks["best_round"]}
    _write_json(output / SETTINGS_FILE, {**record, "timings_s": timings, "checks": checks})
    print("mitoda: timings: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in timings.items()))
    for row in [*checks["rounds"], {"round": "final", **checks["final"]}]:
        print(f"mitoda: check, round {row['round']}: held-out click recall {row['holdout_click_recall']}, "
              f"{row['instance_count']} instances, density count {row['density_count']}")
    if checks["warning"]:
        print(f"mitoda: warning: {checks['warning']}")
    print(f"mitoda: wrote {output / 'model.pt'} and {output / 'predictions'}/{{probability,density,instances}}.tif")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How well the label-free checks of a fine-tune track its true scores, round by round (a diagnostic: needs labels).

    python scripts/round_checks.py RUN_DIR --label LABELS --val_slices 120-164 [--pixel_size NM]

For the model of every pseudo-label round (RUN_DIR/pseudo_labels/round_r/model.pt: round 1 is the starting model,
round r the model after epoch r-1) and the final RUN_DIR/model.pt, prints the held-out click recall, the instance
and density counts that the fine-tune logged (label-free), next to the Dice and PQ of the model on `--val_slices`
of LABELS (never adapted on), and the rank correlation of click recall with Dice.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.errors import InputError, OneLineParser, fail  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Score every round's model on the validation slices and print them beside the logged checks."""
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a scripts/finetune.py output folder")
    parser.add_argument("--label", required=True, help="labels of the target volume")
    parser.add_argument("--val_slices", required=True, help="slices to score on, e.g. 120-164 (not adapted on)")
    parser.add_argument("--pixel_size", default=None, help="as given to the fine-tune")
    args = parser.parse_args(argv)
    import numpy as np
    from monai.inferers import SlidingWindowInferer
    from scipy.stats import spearmanr

    from bundle.data.dataset import normalize_slice
    from bundle.data.io import parse_slices, read_label_instances, read_volume
    from bundle.data.pixel_size import model_scale
    from bundle.inference.predict import VolumePredictor
    from bundle.metrics.evaluate import score_volume
    from bundle.networks import MultiTaskUNet, load_checkpoint

    try:
        record = json.loads((args.run_dir / "finetune.json").read_text())
        original, checks = record["settings"]["input_image"], record["checks"]
    except (OSError, KeyError, ValueError) as err:
        fail(f"{args.run_dir}: not a finished scripts/finetune.py run ({err}); pass its --output_dir")
    try:
        labels = read_label_instances(args.label)
        volume = read_volume(original)
        slices = parse_slices(args.val_slices, len(volume), path="--val_slices")
    except InputError as err:
        fail(str(err))
    models = sorted(args.run_dir.glob("pseudo_labels/round_*/model.pt"), key=lambda p: int(p.parent.name[6:]))
    rows = [(r["round"], path, r) for r, path in zip(checks["rounds"], models)] + [("final", args.run_dir / "model.pt", checks["final"])]
    scale = model_scale(original, args.pixel_size)
    inferer = SlidingWindowInferer([512, 512], 1, 0.25, mode="gaussian")
    print(f"{args.run_dir}: label-free checks (adapted slices) vs scores on {args.val_slices} of {Path(args.label).name}")
    print("| round | model | held-out click recall | instances | density count | Dice | PQ |")
    print("|---|---|---|---|---|---|---|")
    recalls, dices = [], []
    for name, path, check in rows:
        predictor = VolumePredictor(load_checkpoint(MultiTaskUNet(), path), inferer, progress=False, scale=scale)
        outputs = [predictor.predict_image(normalize_slice(volume[z], original, z)) for z in slices]
        scores = score_volume(np.stack([o[0] for o in outputs]), np.stack([o[2] for o in outputs]), labels[slices])
        print(f"| {name} | {path.relative_to(args.run_dir)} | {check['holdout_click_recall']} | {check['instance_count']} "
              f"| {check['density_count']} | {scores['dice']:.3f} | {scores['pq']:.3f} |", flush=True)  # fmt: skip
        recalls.append(check["holdout_click_recall"])
        dices.append(scores["dice"])
    if None not in recalls and len(set(recalls)) > 1:
        print(f"Spearman rank correlation of held-out click recall with Dice: {spearmanr(recalls, dices)[0]:+.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

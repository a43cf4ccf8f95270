#!/usr/bin/env bash
# The main job, the product in one command (CPU, about 23 min on 2 idle cores): fine-tune the shipped source model
# (models/source_model.pt, trained on VNC III) on the EPFL hippocampus volume from the published 15 % clicks
# (points/15pct_split1.csv, every 3rd slice of 0-119), then predict and score the held-out slices 120-164 with it
# and with the source model (NoAdapt), and print both side by side.
# DATASET_DIR (default ../shared/data) and RUN_DIR (default runs/demo) can be overridden.
# Training the NoAdapt baseline itself is one command: python -m monai.bundle run --config_file configs/train.yaml
set -euo pipefail
cd "$(dirname "$0")/.."
DATASET_DIR="${DATASET_DIR:-../shared/data}"
RUN_DIR="${RUN_DIR:-runs/demo}"
EPFL="$DATASET_DIR/epfl_hippocampus"
bash scripts/setup.sh
PY=.venv/bin/python
$PY scripts/finetune.py --target_image "$EPFL/training.tif" --points "$EPFL/points/15pct_split1.csv" \
    --slices 0-119:3 --dataset_dir "$DATASET_DIR" --output_dir "$RUN_DIR"
for model in noadapt finetuned; do
    checkpoint=$([ $model = noadapt ] && echo models/source_model.pt || echo "$RUN_DIR/model.pt")
    $PY -m monai.bundle run --config_file configs/inference.yaml --input_image "$EPFL/training.tif" \
        --checkpoint "$checkpoint" --slices 120-164 --output_dir "$RUN_DIR/heldout_$model"
    $PY -m monai.bundle run --config_file configs/evaluate.yaml --dataset_dir "$DATASET_DIR" \
        --prediction_dir "$RUN_DIR/heldout_$model" --slices 120-164 --output_dir "$RUN_DIR/scores_$model"
done
echo
trained=$(($(wc -l < "$RUN_DIR/inputs/train_clicks.csv") - 1)); held=$(($(wc -l < "$RUN_DIR/inputs/holdout_clicks.csv") - 1))
echo "EPFL slices 120-164 (never adapted on), NoAdapt vs fine-tuned from $((trained + held)) clicks on 40 slices ($trained trained on, $held held out to check each round):"
$PY scripts/compare_scores.py "NoAdapt (models/source_model.pt)=$RUN_DIR/scores_noadapt" \
    "fine-tuned ($RUN_DIR/model.pt)=$RUN_DIR/scores_finetuned"
echo
echo "outputs: $RUN_DIR/model.pt (the adapted model), $RUN_DIR/predictions/*.tif (the whole volume),"
echo "         $RUN_DIR/pseudo_labels/round_*/preview_z*.png (what each round taught),"
echo "         $RUN_DIR/scores_*/overlay_z*.png (green true, red false positives, blue missed), $RUN_DIR/scores_*/metrics.json"

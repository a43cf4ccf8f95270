#!/usr/bin/env bash
# The main job, CPU recipe: source training on VNC III (NoAdapt) -> prediction of EPFL slices 120-164 -> scores.
# DATASET_DIR (default ../shared/data) and RUN_DIR (default runs/noadapt) can be overridden.
set -euo pipefail
cd "$(dirname "$0")/.."
DATASET_DIR="${DATASET_DIR:-../shared/data}"
RUN_DIR="${RUN_DIR:-runs/noadapt}"
bash scripts/setup.sh
.venv/bin/python -m monai.bundle run --config_file configs/train.yaml --dataset_dir "$DATASET_DIR" --output_dir "$RUN_DIR"
.venv/bin/python -m monai.bundle run --config_file configs/inference.yaml --dataset_dir "$DATASET_DIR" \
    --checkpoint "$RUN_DIR/model.pt" --slices 120-164 --output_dir "$RUN_DIR/predictions"
.venv/bin/python -m monai.bundle run --config_file configs/evaluate.yaml --dataset_dir "$DATASET_DIR" \
    --prediction_dir "$RUN_DIR/predictions" --slices 120-164 --output_dir "$RUN_DIR/scores"

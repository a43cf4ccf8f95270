#!/usr/bin/env bash
# Set up and run the test suite (needs the real data at ../shared/data; tests fail without it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh tracking cluster dev napari
.venv/bin/python -m pytest -q "$@"

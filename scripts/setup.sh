#!/usr/bin/env bash
# Create .venv and install the pinned requirements (torch 2.13.0 first: the CPU wheel on this machine).
# GPU users: install a CUDA build of torch 2.13.0 into .venv before running this script.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt

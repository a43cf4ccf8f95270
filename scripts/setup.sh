#!/usr/bin/env bash
# Create .venv and install the pinned lock requirements/runtime.txt, plus the optional groups named as arguments:
#   bash scripts/setup.sh                 # runtime only (prediction, fine-tuning, training)
#   bash scripts/setup.sh tracking dev    # + mlflow tracking + the test suite
#   bash scripts/setup.sh cluster         # + dask/distributed: blockwise prediction (configs/inference_cluster.yaml)
#   bash scripts/setup.sh napari          # + napari, PyQt6 and the plugin napari_mitoda/ (docs/napari.md)
# scripts/run_tests.sh installs tracking, cluster, dev and napari.
# torch==2.13.0 resolves to the CPU wheel on this machine. GPU users: install a CUDA build of torch 2.13.0 into
# .venv first; the lock then keeps it. To change a requirement, edit requirements/*.in and run scripts/lock.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
locks=(-r requirements/runtime.txt)
for group in "$@"; do
    [ -f "requirements/$group.txt" ] || { echo "setup.sh: error: requirements/$group.txt: no such group; use tracking, cluster, dev or napari" >&2; exit 2; }
    locks+=(-r "requirements/$group.txt")
done
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check "${locks[@]}"
# the plugin, in place (it imports this repository's `bundle`: napari_mitoda/mitoda_napari/_repo.py); its
# dependencies are the lock's
if [[ " $* " == *" napari "* ]]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e napari_mitoda
fi

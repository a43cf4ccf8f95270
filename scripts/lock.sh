#!/usr/bin/env bash
# Refresh the pinned locks requirements/*.txt from requirements/*.in (the files to edit), then metadata.json's
# versions from the locks (python -m bundle.release). Keeps every pin that still fits; `--upgrade` moves all
# pins to the newest releases, `--upgrade-package NAME` one package. Resolves for this machine: Python 3.11, the
# CPU torch wheel. Needs a network connection (PyPI); pip-tools runs from its own venv, .venv-lock.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv-lock/bin/pip-compile ] || { "$PYTHON" -m venv .venv-lock && .venv-lock/bin/python -m pip install -q pip-tools==7.6.2; }
export CUSTOM_COMPILE_COMMAND="bash scripts/lock.sh"
for group in runtime tracking cluster dev napari; do  # in this order: each later group is constrained by the earlier locks
    .venv-lock/bin/pip-compile -q --no-emit-index-url --no-emit-find-links --strip-extras --allow-unsafe "$@" \
        -o "requirements/$group.txt" "requirements/$group.in"
done
# the CPU wheel's local tag (2.13.0+cpu) would refuse a CUDA build of the same release: pin the release
sed -i -E 's/^torch==([0-9.]+)\+cpu$/torch==\1/' requirements/runtime.txt
.venv-lock/bin/python -m bundle.release

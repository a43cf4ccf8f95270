"""Shared test helpers: the real data paths (tests fail, never skip, without them), running the bundle as a user
would, and one-line error checks. Shared fixtures are in conftest.py."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bundle.errors import InputError

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
VNC = DATA / "vnc3" / "stack1"
EPFL = DATA / "epfl_hippocampus"


def need(path: Path) -> Path:
    """Fail (not skip) when the shared real data is missing."""
    assert path.exists(), f"real test data missing: {path} (expected next to the repo at ../shared/data)"
    return path


def raises_one_line(func: Callable, *args, name: str, **kwargs) -> str:
    """Call `func`, expect an InputError whose single-line message contains `name`; return the message."""
    with pytest.raises(InputError) as info:
        func(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert name in msg, msg
    return msg


def run_bundle(*args: str, command: str = "run") -> subprocess.CompletedProcess:
    """Run `python -m monai.bundle COMMAND ARGS` from the repo root, as a user would."""
    return subprocess.run([sys.executable, "-m", "monai.bundle", command, *args], cwd=REPO, capture_output=True, text=True)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """The run failed with exactly one `mitoda: error:` line on stderr that names every fragment."""
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("mitoda: error: ")]
    assert len(lines) == 1, result.stderr[-3000:]
    assert result.stderr.count(lines[0][len("mitoda: error: "):]) == 1, result.stderr[-3000:]  # said once only
    for fragment in fragments:
        assert fragment in lines[0], lines[0]

"""Shared test helpers: the real data paths (tests fail, never skip, without them) and one-line error checks."""

from __future__ import annotations

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

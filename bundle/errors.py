"""One error type for bad user input, printed as a single line by `monai.bundle run`."""

from __future__ import annotations

import argparse
import os
import re
import sys
from types import TracebackType
from typing import NoReturn


class InputError(ValueError):
    """Bad user input; the message names the file, the problem and the fix on one line."""


def input_error(path: str | os.PathLike, problem: str, fix: str) -> InputError:
    """Build a one-line InputError '<path>: <problem>; <fix>'."""
    prefix = f"{os.fspath(path)}: " if os.fspath(path) else ""
    return InputError(re.sub(r"\s*[\r\n]+\s*", " ", f"{prefix}{problem}; {fix}"))


def find_input_error(exc: BaseException | None) -> InputError | None:
    """Return the InputError in `exc`'s cause/context chain (MONAI wraps errors in RuntimeError)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, InputError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _excepthook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    """Print an InputError as one line and exit 1; leave every other error to Python's default hook."""
    err = find_input_error(exc)
    if err is None:
        sys.__excepthook__(kind, exc, tb)
        return
    print(f"mitoda: error: {err}", file=sys.stderr)


def install_excepthook() -> None:
    """Make uncaught InputErrors print as one line (used by `python -m monai.bundle run`)."""
    sys.excepthook = _excepthook


def fail(message: str) -> NoReturn:
    """Print one line 'mitoda: error: <message>' on stderr and exit 2 (the command-line scripts)."""
    print(f"mitoda: error: {' '.join(str(message).split())}", file=sys.stderr)
    raise SystemExit(2)


class OneLineParser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one line 'mitoda: error: ...' (exit 2)."""

    def error(self, message: str) -> NoReturn:
        """Print the error as one line and exit 2."""
        fail(f"{message} (see --help)")

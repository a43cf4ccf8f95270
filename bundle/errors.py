"""One error type for bad user input, printed as a single line by `monai.bundle run`."""

from __future__ import annotations

import argparse
import errno
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


# file-system failures a user can fix (a full disk, a read-only or foreign folder): reported as one line too
_FIXABLE_OS_ERRORS = {
    errno.ENOSPC: ("no space left on the device", "free some space or pass another --output_dir"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or pass another --output_dir"),
    errno.EROFS: ("read-only file system", "pass an --output_dir on a writable disk"),
    errno.EACCES: ("permission denied", "pass a path you can read and write"),
    errno.EPERM: ("operation not permitted", "pass a path you can read and write"),
}


# optional packages (requirements/<group>.in) a run may ask for: a missing one is a one-line error naming its group
OPTIONAL_PACKAGES = {"mlflow": "tracking", "dask": "cluster", "distributed": "cluster"}


def find_input_error(exc: BaseException | None) -> InputError | None:
    """Return the InputError in `exc`'s cause/context chain (MONAI wraps errors in RuntimeError); a missing optional
    package, a full disk, a read-only or unwritable path in the chain becomes one too."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, InputError):
            return exc
        missing = next((name for name in OPTIONAL_PACKAGES if isinstance(exc, ImportError) and name in str(exc)), None)
        if missing is not None:
            group = OPTIONAL_PACKAGES[missing]
            return input_error(missing, f"not installed (an optional package of the '{group}' group)",
                               f"run: bash scripts/setup.sh {group}")  # fmt: skip
        if isinstance(exc, OSError) and exc.errno in _FIXABLE_OS_ERRORS:
            problem, fix = _FIXABLE_OS_ERRORS[exc.errno]
            return input_error(exc.filename or "", problem, fix)
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


class CommandError(SystemExit):
    """A command-line script's one-line error (exit code 2); `message` is the line after 'mitoda: error: ', for a
    caller in the same process (the napari plugin) to show.

    Args:
        message: the one-line message.
    """

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message


def fail(message: str) -> NoReturn:
    """Print one line 'mitoda: error: <message>' on stderr and exit 2 (the command-line scripts; `CommandError`)."""
    message = " ".join(str(message).split())
    print(f"mitoda: error: {message}", file=sys.stderr)
    raise CommandError(message)


class OneLineParser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one line 'mitoda: error: ...' (exit 2)."""

    def error(self, message: str) -> NoReturn:
        """Print the error as one line and exit 2."""
        fail(f"{message} (see --help)")

"""Output folders and files: checked before anything is written, one run at a time, every file whole or absent.

Standard library only. `claim_output_dir` is what every command calls on its output folder: it refuses a path that
cannot be a folder of outputs (one-line InputError), creates the folder, takes its run lock for the rest of the
process (a second run into the same folder stops with one line) and removes the outputs of an earlier run that this
run will not rewrite, so that they are never mistaken for this run's. `atomic_output(s)` write files under unique
temporary names that replace the final ones only when complete.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from bundle.errors import InputError, input_error

_held: dict[Path, int] = {}  # output folder -> open lock file descriptor, for the life of the process
logger = logging.getLogger("mitoda.outputs")


def check_output_dir(output_dir: str | os.PathLike | None, outputs: Iterable[str] = ()) -> Path:
    """`output_dir` as an absolute Path if it can hold this run's `outputs`; else a one-line InputError.

    `outputs` are the names this run writes there: files, or folders when a name ends with "/" (an OME-Zarr image,
    `probability/`). Refused: an empty path, a file in its place or above it, a folder that cannot be written, and
    an output name that is taken by the other kind (a folder where a file is written, or a file where a folder is).
    Nothing is created.
    """
    if output_dir is None or not os.fspath(output_dir).strip():
        raise InputError("output_dir: empty path; pass --output_dir DIR (a new or an existing folder)")
    path = Path(os.fspath(output_dir)).expanduser().absolute()
    ancestor = next(p for p in (path, *path.parents) if p.exists())
    if not ancestor.is_dir():
        where = "is a file" if ancestor == path else f"lies below the file {ancestor}"
        raise input_error(path, f"output_dir {where}", "pass a folder path for the outputs")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise input_error(ancestor, "folder is not writable", "pass an --output_dir you can write to")
    for name in outputs:
        folder = name.endswith("/")
        if (path / name).is_file() if folder else (path / name).is_dir():
            there, written = ("file", "folder") if folder else ("folder", "file")
            raise input_error(path / name.rstrip("/"), f"is a {there} where this run writes a {written}",
                              "remove it or pass another --output_dir")  # fmt: skip
    return path


def claim_output_dir(
    output_dir: str | os.PathLike | None, outputs: Iterable[str] = (), stale: Iterable[str] = ()
) -> Path:
    """Check `output_dir` (see `check_output_dir`), create it and hold its run lock until the process ends.

    Args:
        output_dir: the folder.
        outputs: names this run writes there (see `check_output_dir`: a name ending with "/" is a folder).
        stale: names (glob patterns; ending with "/": folders) of an earlier run's outputs that this run does not
            write: removed, with a log line.

    A folder another process holds is an InputError; the same process may claim a folder again (a script that runs
    several configs into one folder).
    """
    outputs = list(outputs)
    path = check_output_dir(output_dir, outputs)
    path.mkdir(parents=True, exist_ok=True)
    if path not in _held:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)  # the lock is on the folder itself: no lock file is left
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise input_error(path, "another run is writing into this folder",
                              "wait for it to finish, or pass another --output_dir") from None  # fmt: skip
        _held[path] = fd  # released by the OS when the process ends, however it ends
    written = {name.rstrip("/") for name in outputs}
    for pattern in stale:
        folder = pattern.endswith("/")
        for old in sorted(path.glob(pattern.rstrip("/"))):
            if old.name in written or not (old.is_dir() if folder else old.is_file()):
                continue
            if folder:
                shutil.rmtree(old)
            else:
                old.unlink()
            logger.warning(f"{old}: removed, an output of an earlier run that this run does not write")
    return path


@contextmanager
def atomic_outputs(paths: Sequence[str | os.PathLike]) -> Iterator[list[Path]]:
    """Yield one unique temporary path beside each of `paths`; they replace `paths` only if the block completes,
    else they are removed. Two processes writing the same file never share a temporary name. A temporary path the
    block made a folder (a zarr image) replaces a folder already at its final path."""
    finals = [Path(os.fspath(p)).expanduser() for p in paths]
    tmps = [p.with_name(f".{p.name}.{uuid.uuid4().hex[:12]}.tmp") for p in finals]
    for final in finals:
        final.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmps
        for tmp, final in zip(tmps, finals):
            if tmp.is_dir() and final.is_dir():  # a folder output (a zarr image) replaces the earlier one
                shutil.rmtree(final)
            os.replace(tmp, final)
    finally:
        for tmp in tmps:
            if tmp.is_dir():
                shutil.rmtree(tmp)
            else:
                tmp.unlink(missing_ok=True)


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """`atomic_outputs` for one file: yield its temporary path."""
    with atomic_outputs([path]) as (tmp,):
        yield tmp

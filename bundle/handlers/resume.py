"""Resume a killed run from the newest interval checkpoint that MONAI's CheckpointSaver wrote."""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader

from bundle.errors import input_error

CHECKPOINT_PATTERN = re.compile(r"checkpoint_(?:epoch|iteration)=(\d+)\.pt$")


def checkpoints_newest_first(save_dir: str | Path) -> list[Path]:
    """The interval checkpoints in `save_dir`, highest epoch/iteration number first."""
    found = [(int(m.group(1)), p) for p in Path(save_dir).glob("*.pt") if (m := CHECKPOINT_PATTERN.search(p.name))]
    return [path for _, path in sorted(found, reverse=True)]


def readable(path: Path) -> bool:
    """Whether torch can load `path` weights-only (MONAI's CheckpointSaver writes in place: a kill while saving
    truncates it, and such a file is skipped). A file that holds other Python objects than tensors and plain
    containers is never unpickled: it could run code (someone else's run folder), so it stops the run (InputError)."""
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower():
            raise input_error(path, "is not a weights-only checkpoint (it holds Python objects, which could run code "
                              "when loaded; this project never writes such files)",
                              "delete it, or pass another --output_dir") from None  # fmt: skip
        return False
    except (EOFError, RuntimeError, OSError):
        return False
    return True


def latest_checkpoint(save_dir: str | Path) -> Path | None:
    """The newest readable interval checkpoint in `save_dir`, or None."""
    return next((path for path in checkpoints_newest_first(save_dir) if readable(path)), None)


class ResumeFromLatest:
    """At STARTED, load `load_dict` (network, optimizer, scheduler, trainer, ...) from the newest checkpoint.

    A checkpoint truncated by a kill while it was being written is skipped (with a warning) for the one before it,
    which is why the configs keep two (`n_saved: 2`): ignite deletes the older file before writing the newer one.
    """

    def __init__(self, save_dir: str | Path, load_dict: Mapping, name: str = "mitoda.resume") -> None:
        self.save_dir = Path(save_dir)
        self.load_dict = dict(load_dict)
        self.logger = logging.getLogger(name)

    def attach(self, engine: Engine) -> None:
        """Run before training starts."""
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        """Load the newest readable checkpoint if there is one; a fresh run starts from scratch."""
        for path in checkpoints_newest_first(self.save_dir):
            if readable(path):
                break
            self.logger.warning(f"{path}: unreadable checkpoint (the run was killed while saving it); trying an older one")
        else:
            return
        CheckpointLoader(load_path=str(path), load_dict=self.load_dict, map_location="cpu")(engine)
        self.logger.info(f"resumed from {path} at epoch {engine.state.epoch}, iteration {engine.state.iteration}")

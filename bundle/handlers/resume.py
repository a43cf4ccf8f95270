"""Resume a killed run from the newest interval checkpoint that MONAI's CheckpointSaver wrote."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader

CHECKPOINT_PATTERN = re.compile(r"checkpoint_(?:epoch|iteration)=(\d+)\.pt$")


def latest_checkpoint(save_dir: str | Path) -> Path | None:
    """The interval checkpoint with the highest epoch/iteration number in `save_dir`, or None."""
    found = [(int(m.group(1)), p) for p in Path(save_dir).glob("*.pt") if (m := CHECKPOINT_PATTERN.search(p.name))]
    return max(found)[1] if found else None


class ResumeFromLatest:
    """At STARTED, load `load_dict` (network, optimizer, scheduler, trainer, ...) from the newest checkpoint."""

    def __init__(self, save_dir: str | Path, load_dict: Mapping, name: str = "mitoda.resume") -> None:
        self.save_dir = Path(save_dir)
        self.load_dict = dict(load_dict)
        self.logger = logging.getLogger(name)

    def attach(self, engine: Engine) -> None:
        """Run before training starts."""
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        """Load the newest checkpoint if there is one; a fresh run starts from scratch."""
        path = latest_checkpoint(self.save_dir)
        if path is None:
            return
        CheckpointLoader(load_path=str(path), load_dict=self.load_dict, map_location="cpu")(engine)
        self.logger.info(f"resumed from {path} at epoch {engine.state.epoch}, iteration {engine.state.iteration}")

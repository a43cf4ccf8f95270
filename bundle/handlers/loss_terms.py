"""Logs the unweighted terms of a multi-term loss (its `last` dict) to TensorBoard and the log."""

from __future__ import annotations

import logging
import os

from ignite.engine import Engine, Events
from torch.utils.tensorboard import SummaryWriter


class LossTermsLogger:
    """Every `interval` iterations, `loss.last` ({name: float}) as `prefix/name` scalars and one log line."""

    def __init__(self, loss, log_dir: str | os.PathLike | None = None, interval: int = 50, prefix: str = "baseline") -> None:
        self.loss, self.log_dir, self.interval, self.prefix = loss, log_dir, interval, prefix
        self.logger = logging.getLogger("mitoda.baseline")
        self._writer: SummaryWriter | None = None

    def attach(self, engine: Engine) -> None:
        """Log after each iteration (when due)."""
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Write the last terms at multiples of `interval`."""
        iteration, values = engine.state.iteration, dict(getattr(self.loss, "last", {}))
        if self.interval <= 0 or iteration % self.interval or not values:
            return
        self.logger.info(f"{self.prefix} terms at iteration {iteration}: " + ", ".join(f"{k} {v:.4g}" for k, v in values.items()))
        if self.log_dir is None:
            return
        if self._writer is None:
            self._writer = SummaryWriter(log_dir=str(self.log_dir))
        for name, value in values.items():
            self._writer.add_scalar(f"{self.prefix}/{name}", value, iteration)
        self._writer.flush()

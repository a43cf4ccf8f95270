"""Prototype bank of the class-focused contrastive loss: running-mean prototypes and k-means background clusters."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from torch.utils.tensorboard import SummaryWriter

from bundle.errors import InputError
from bundle.losses.prototypes import kmeans_centres, running_mean
from bundle.networks.checkpoint import read_torch_file

# cosine similarities logged to TensorBoard: (tag, prototype a, prototype b); "fg"/"bg" are the loss's class means
LOG_PAIRS = (
    ("fg_vs_bg", "fg", "bg"),
    ("source_fg_vs_target_pl_fg", "source_fg", "target_pl_fg"),
    ("source_fg_vs_target_label_fg", "source_fg", "target_label_fg"),
    ("target_pl_fg_vs_target_pl_bg", "target_pl_fg", "target_pl_bg"),
)
SOURCE_PROTOTYPE_NAMES = ("source_fg", "source_bg")  # what scripts/source_prototypes.py writes


def load_source_prototypes(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """{"source_fg", "source_bg"}: (D,) float32 prototypes of a file written by scripts/source_prototypes.py."""
    path = Path(path)
    fix = "make it with: python scripts/source_prototypes.py --checkpoint CKPT --output PATH"
    state = read_torch_file(path, "source prototypes file", fix, fix)
    found = state if isinstance(state, dict) else {}
    rows = {k: found.get(k) for k in SOURCE_PROTOTYPE_NAMES}
    if not all(isinstance(v, torch.Tensor) and v.ndim == 1 and torch.isfinite(v).all() for v in rows.values()):
        raise InputError(f"{path}: holds no finite (D,) tensors {', '.join(SOURCE_PROTOTYPE_NAMES)}; {fix}")
    return {k: v.float() for k, v in rows.items()}


class PrototypeBank:
    """Named prototypes as running means (p ← m·p + (1 − m)·batch mean), FIFO buffers of recent features and their
    k-means centres, refit when iteration % refresh_interval == 0 (and once as soon as a buffer can be clustered,
    with `initial_fit`). The loss calls `update`/`push`; `attach` adds the refresh and TensorBoard logging.
    `fixed_source_prototypes` (a scripts/source_prototypes.py file): source_fg/source_bg are that file's and never
    updated (source-free fine-tuning keeps the source model's prototypes)."""

    def __init__(
        self,
        momentum: float = 0.9,
        num_clusters: int = 2,
        refresh_interval: int = 1000,
        buffer_size: int = 8192,
        buffer_per_iteration: int = 512,
        initial_fit: bool = True,
        log_dir: str | os.PathLike | None = None,
        log_interval: int = 50,
        seed: int = 0,
        fixed_source_prototypes: str | os.PathLike | None = None,
    ) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if refresh_interval < 1 or num_clusters < 1:
            raise ValueError(f"refresh_interval and num_clusters must be >= 1, got {refresh_interval}, {num_clusters}")
        self.momentum, self.num_clusters, self.refresh_interval = momentum, num_clusters, refresh_interval
        self.buffer_size, self.buffer_per_iteration, self.initial_fit = buffer_size, buffer_per_iteration, initial_fit
        self.log_dir, self.log_interval, self.seed = log_dir, log_interval, seed
        self.prototypes: dict[str, torch.Tensor] = {}
        if fixed_source_prototypes is not None:
            self.prototypes.update(load_source_prototypes(fixed_source_prototypes))
        self.fixed: set[str] = set(self.prototypes)  # names that `update` leaves alone
        self.buffers: dict[str, torch.Tensor] = {}
        self.clusters: dict[str, torch.Tensor] = {}
        self.refreshes: list[int] = []  # iterations at which the clusters were fitted
        self.last: dict[str, torch.Tensor] = {}  # detached values of the last loss call, for logging only
        self.logger = logging.getLogger("mitoda.prototypes")
        self._writer: SummaryWriter | None = None

    @torch.no_grad()
    def update(self, means: Mapping[str, torch.Tensor | None]) -> None:
        """Running-mean update of each named prototype with this batch's mean (None: no pixel, or fixed: unchanged)."""
        for name, mean in means.items():
            if mean is None or name in self.fixed:
                continue
            self.prototypes[name] = running_mean(self.prototypes.get(name), mean.detach().float().clone(), self.momentum)

    @torch.no_grad()
    def push(self, name: str, features: torch.Tensor) -> None:
        """Append up to `buffer_per_iteration` random rows of (N, D) `features` to buffer `name` (keeps the newest)."""
        if len(features) == 0:
            return
        if len(features) > self.buffer_per_iteration:
            features = features[torch.randperm(len(features))[: self.buffer_per_iteration].to(features.device)]
        old = self.buffers.get(name, features.new_zeros((0, features.shape[1])).cpu())
        self.buffers[name] = torch.cat([old, features.detach().float().cpu()])[-self.buffer_size :]

    def get(self, name: str) -> torch.Tensor | None:
        """Prototype `name` (D,) or None when not seen yet."""
        return self.prototypes.get(name)

    def refresh(self, iteration: int) -> None:
        """Refit the k-means centres of every buffer (seeded by seed + iteration)."""
        for name, rows in self.buffers.items():
            if len(rows):
                self.clusters[name] = kmeans_centres(rows, self.num_clusters, seed=self.seed + iteration)
        self.refreshes.append(int(iteration))
        self.logger.info(f"prototype clusters refitted at iteration {iteration}: {sorted(self.clusters)}")

    def due(self, iteration: int) -> bool:
        """True on multiples of refresh_interval, and (initial_fit) while a non-empty buffer has no clusters yet."""
        missing = any(len(rows) and name not in self.clusters for name, rows in self.buffers.items())
        return iteration % self.refresh_interval == 0 or (self.initial_fit and missing)

    def attach(self, engine: Engine) -> None:
        """Refresh clusters and log after each iteration."""
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Refit the clusters when due; log prototype similarities every `log_interval` iterations."""
        iteration = engine.state.iteration
        if self.due(iteration):
            self.refresh(iteration)
        if self.log_dir is not None and self.log_interval > 0 and iteration % self.log_interval == 0:
            self.log(iteration)

    def similarities(self) -> dict[str, float]:
        """Cosine similarities of the LOG_PAIRS prototypes that exist (class means from the last loss call)."""
        known = {**self.prototypes, **{k: v for k, v in self.last.items() if k in ("fg", "bg")}}
        return {
            tag: float(F.cosine_similarity(known[a].float().cpu(), known[b].float().cpu(), dim=0))
            for tag, a, b in LOG_PAIRS
            if a in known and b in known
        }

    def log(self, iteration: int) -> None:
        """Similarities and the last contrastive loss to TensorBoard."""
        if self._writer is None:
            self._writer = SummaryWriter(log_dir=str(self.log_dir))
        values = {f"prototypes/cos_{k}": v for k, v in self.similarities().items()}
        if "loss" in self.last:
            values["prototypes/contrast_loss"] = float(self.last["loss"])
        for tag, value in values.items():
            self._writer.add_scalar(tag, value, iteration)
        self._writer.flush()

    def state_dict(self) -> dict:
        """Prototypes, buffers, clusters, refresh iterations (tensors on the CPU) and the names of fixed prototypes."""
        cpu = lambda d: {k: v.detach().cpu().clone() for k, v in d.items()}  # noqa: E731
        return {
            "prototypes": cpu(self.prototypes),
            "buffers": cpu(self.buffers),
            "clusters": cpu(self.clusters),
            "refreshes": torch.as_tensor(self.refreshes, dtype=torch.int64),
            "fixed": sorted(self.fixed),
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore what `state_dict` saved (fixed prototypes that `state` lacks are kept)."""
        fixed = {k: v for k, v in self.prototypes.items() if k in self.fixed}
        self.prototypes = {**fixed, **{k: v.clone() for k, v in state["prototypes"].items()}}
        self.fixed |= set(state.get("fixed", ()))
        self.buffers = {k: v.clone() for k, v in state["buffers"].items()}
        self.clusters = {k: v.clone() for k, v in state["clusters"].items()}
        self.refreshes = [int(i) for i in state["refreshes"]]


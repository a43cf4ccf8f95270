"""Progress, cancel and each pseudo-label round's results of a run, for a caller in the same process (the napari
plugin, napari_mitoda/): the hook the command-line runs never use.

A caller subscribes with `listening(callback, cancel)` around a run (e.g. `scripts/finetune.py`'s `main` in a
background thread). `RunEvents`, one of configs/train.yaml's trainer handlers, then calls `callback` with
{"kind": "iteration", ...} after every iteration and stops the run with `Cancelled` once `cancel` is set;
`PseudoLabelRounds` calls it with {"kind": "round", ...} after writing each round (`round_event`). Without a
listener both do nothing. A cancelled fine-tune continues, as a killed one does, from its last epoch checkpoint when
the same run is started again (`bundle.handlers.resume`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ignite.engine import Engine, Events

from bundle.inference.postprocess import label_instances

Callback = Callable[[dict], None]


class Cancelled(Exception):
    """The caller cancelled the run (`listening`'s `cancel` was set)."""


@dataclass(frozen=True)
class _Listener:
    callback: Callback
    cancel: threading.Event | None


_listeners: list[_Listener] = []
_lock = threading.Lock()


@contextmanager
def listening(callback: Callback, cancel: threading.Event | None = None) -> Iterator[None]:
    """Call `callback(event)` with the events of the runs started inside the block; a set `cancel` stops them."""
    listener = _Listener(callback, cancel)
    with _lock:
        _listeners.append(listener)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(listener)


def listened() -> bool:
    """Whether anyone listens (the events' payloads are only computed then)."""
    return bool(_listeners)


def emit(kind: str, **data: object) -> None:
    """Send the event {"kind": kind, **data} to every listener."""
    for listener in list(_listeners):
        listener.callback({"kind": kind, **data})


def check_cancel() -> None:
    """Raise `Cancelled` when a listener has asked to cancel."""
    if any(listener.cancel is not None and listener.cancel.is_set() for listener in list(_listeners)):
        raise Cancelled("cancelled; start the same run again to continue it from its last epoch checkpoint")


def round_event(r: int, num_rounds: int, folder: str | Path, labels: np.ndarray,
                probabilities: Sequence[np.ndarray]) -> None:  # fmt: skip
    """Emit round `r` (1-based) of `num_rounds`: its folder, its pseudo-labels (Z, Y, X: labels.tif there), and the
    probability (Z, Y, X) of the target slices it predicted with their instances (`label_instances` per slice)."""
    probability = np.stack(probabilities).astype(np.float32)
    instances = np.stack([label_instances(p) for p in probability])
    emit("round", round=r, num_rounds=num_rounds, folder=Path(folder), labels=labels, probability=probability,
         instances=instances)  # fmt: skip


class RunEvents:
    """Ignite handler of a trainer: after every iteration, emits {"kind": "iteration", "iteration", "max_iterations",
    "epoch", "max_epochs"} and stops the run with `Cancelled` when a listener asked to (`listening`); without a
    listener it does nothing."""

    def attach(self, engine: Engine) -> None:
        """Run after every iteration."""
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Report the iteration; cancel if asked."""
        if not listened():
            return
        state = engine.state
        emit("iteration", iteration=state.iteration, max_iterations=state.epoch_length * state.max_epochs,
             epoch=state.epoch, max_epochs=state.max_epochs)  # fmt: skip
        check_cancel()

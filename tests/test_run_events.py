"""bundle.handlers.run_events: a trainer reports its iterations to a listener in the same process and stops when
the listener cancels; without a listener it does nothing."""

from __future__ import annotations

import threading

import pytest
from ignite.engine import Engine

from bundle.handlers import RunEvents
from bundle.handlers.run_events import Cancelled, listened, listening


def _trainer() -> Engine:
    """An engine of 3 epochs of 2 iterations with RunEvents attached."""
    engine = Engine(lambda engine, batch: batch)
    RunEvents().attach(engine)
    return engine


def test_iterations_are_reported_and_cancel_stops_the_run() -> None:
    events, cancel = [], threading.Event()

    def listen(event: dict) -> None:
        events.append((event["kind"], event["iteration"], event["max_iterations"], event["epoch"]))
        if event["iteration"] == 3:
            cancel.set()

    engine = _trainer()
    with listening(listen, cancel), pytest.raises(Cancelled):
        engine.run([0, 1], max_epochs=3)
    assert events == [("iteration", 1, 6, 1), ("iteration", 2, 6, 1), ("iteration", 3, 6, 2)]
    assert engine.state.iteration == 3 and not listened()  # the listener is gone after the block


def test_without_a_listener_nothing_happens() -> None:
    engine = _trainer()
    engine.run([0, 1], max_epochs=3)
    assert engine.state.iteration == 6

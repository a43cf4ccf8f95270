"""An ignite Engine around one call, so that engine handlers (MONAI's `--tracking mlflow`) work on inference/evaluate."""

from __future__ import annotations

import logging
import numbers
import time
from collections.abc import Callable, Sequence
from typing import Any

from ignite.engine import Engine


class CallEngine(Engine):
    """Runs `function()` as its one iteration; the numbers it returns (and `wall_s`) become `state.metrics`.

    Handlers attach as to any MONAI evaluator, e.g. the MLFlowHandler that `monai.bundle run --tracking mlflow`
    appends to the config's `handlers` list: it then logs these metrics and the executed config.
    """

    def __init__(self, function: Callable[[], Any], handlers: Sequence[Any] = ()) -> None:
        super().__init__(self._call)
        # ignite's own start/epoch/"terminating due to exception" lines say nothing for one call, and would repeat
        # a bad-input error before the bundle's one-line `mitoda: error:` message
        self.logger.setLevel(logging.CRITICAL)
        self.function = function
        self.result: Any = None
        for handler in handlers:
            handler.attach(self)

    def _call(self, engine: Engine, batch: Any) -> Any:
        """The iteration: call the function, keep its result, publish its numbers as metrics."""
        start = time.perf_counter()
        self.result = self.function()
        numbers_out = self.result.items() if isinstance(self.result, dict) else ()
        self.state.metrics.update(
            {key: float(value) for key, value in numbers_out if isinstance(value, numbers.Real) and not isinstance(value, bool)}
        )
        self.state.metrics["wall_s"] = time.perf_counter() - start
        return self.result

    def __call__(self) -> Any:
        """Run the one iteration (handlers see STARTED ... COMPLETED) and return the function's result."""
        self.run([None], max_epochs=1)
        return self.result

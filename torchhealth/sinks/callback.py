"""Alerts to user code: a callable, or Python's warnings machinery."""

from __future__ import annotations

import warnings
from typing import Any, Callable

from torchhealth.records import Alert
from torchhealth.errors import TrainingHealthWarning
from torchhealth.sinks.base import Sink


class CallbackSink(Sink):
    """Calls ``fn(alert)`` for each alert."""

    name = "callback"

    def __init__(self, fn: Callable[[Alert], Any], index: int = 0) -> None:
        self.fn = fn
        # the index keeps two lambdas apart: a failing one must not switch the other off
        self.name = f"callback #{index} {getattr(fn, '__qualname__', repr(fn))}"

    def write_alerts(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            self.fn(alert)


class WarningSink(Sink):
    """Issues a ``TrainingHealthWarning`` for each alert."""

    name = "warn"

    def write_alerts(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            warnings.warn(str(alert), TrainingHealthWarning, stacklevel=4)

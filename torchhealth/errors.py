"""Exceptions and warnings the monitor raises on purpose."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torchhealth.records import Alert


class TrainingHealthWarning(UserWarning):
    """Issued for each alert when ``on_alert="warn"``."""


class TrainingHealthError(RuntimeError):
    """Raised by ``Monitor.step`` on a critical alert when ``on_alert="raise"``.

    Attributes:
        alert: The critical alert that stopped training.
    """

    def __init__(self, alert: "Alert") -> None:
        super().__init__(str(alert))
        self.alert = alert

"""The sink interface: where snapshots and alerts go. Sinks hold no statistic-specific logic."""

from __future__ import annotations

from torchhealth.detectors.alert import Alert
from torchhealth.snapshot import Snapshot


class Sink:
    """Receives snapshots (on logging steps) and alerts (as they are raised)."""

    name = "sink"

    def write_snapshot(self, snapshot: Snapshot) -> None:
        """Records the statistics of one logging step."""

    def write_alerts(self, alerts: list[Alert]) -> None:
        """Delivers newly raised alerts."""

    def flush(self) -> None:
        """Makes everything written so far durable."""

    def close(self) -> None:
        """Flushes and releases resources; safe to call twice."""

"""The sink interface: where snapshots and alerts go. Sinks hold no statistic-specific logic."""

from __future__ import annotations

import dataclasses
from typing import Any

from torchhealth.records import Alert
from torchhealth.records import Snapshot


@dataclasses.dataclass
class SinkContext:
    """What a sink may read when it attaches to a monitor (``Sink.attach``).

    Attributes:
        log_dir: The monitor's ``log_dir`` (None: it writes no files).
        rank: This process's rank under torch.distributed (0 without a process group).
        world_size: Ranks of the process group (1 without one).
        options: The monitor's ``MonitorOptions``.
    """

    log_dir: str | None
    rank: int = 0
    world_size: int = 1
    options: Any = None


class Sink:
    """Receives snapshots (on logging steps) and alerts (as they are raised).

    Every sink of a monitor gets both; override what it handles. ``name`` names it in the message
    the monitor logs if it fails (it is then switched off, and training goes on).
    """

    name = "sink"

    def attach(self, context: SinkContext) -> bool:
        """Binds the sink to one monitor; returns False when it does not apply there (it is dropped)."""
        return True

    def write_snapshot(self, snapshot: Snapshot) -> None:
        """Records the statistics of one logging step (``snapshot.shown()``: windowed values held)."""

    def write_alerts(self, alerts: list[Alert]) -> None:
        """Delivers newly raised alerts."""

    def flush(self) -> None:
        """Makes everything written so far durable."""

    def close(self) -> None:
        """Flushes and releases resources; safe to call twice."""


class FileSink(Sink):
    """A sink that writes under the monitor's ``log_dir``, on rank 0 only (other ranks hold the same picture).

    Args:
        log_dir: Where to write; None takes the monitor's ``log_dir`` at ``attach`` (no files without one).
    """

    def __init__(self, log_dir: str | None = None) -> None:
        self.log_dir = log_dir

    def attach(self, context: SinkContext) -> bool:
        if self.log_dir is None:
            self.log_dir = context.log_dir
        return self.log_dir is not None and context.rank == 0

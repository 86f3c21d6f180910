"""Optimizer steps that AMP's GradScaler skipped, counted on the host (skips are decided on the host)."""

from __future__ import annotations

from torchhealth.collectors.base import Collector
from torchhealth.snapshot import Snapshot


class SkippedStepCollector(Collector):
    """Counts skipped optimizer steps per check interval into ``Snapshot.skipped_steps``.

    A GradScaler skips a step when the scaled gradients overflowed; that is how AMP finds its
    scale, not a training problem, so skipped steps are counted instead of being checked.
    """

    def __init__(self) -> None:
        self.skipped = 0

    def record(self) -> None:
        """Counts one skipped optimizer step."""
        self.skipped += 1

    def finish(self, values, snapshot: Snapshot, interval_start: int) -> None:
        snapshot.skipped_steps = self.skipped
        super().finish(values, snapshot, interval_start)

    def reset_interval(self) -> None:
        self.skipped = 0

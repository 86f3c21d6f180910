"""Optimizer steps that AMP's GradScaler skipped, counted on the host (skips are decided on the host).

The count is still sent through the check's reduction (as a mean over ranks), so every rank's
snapshot, and so every rank's decisions, carry the same number.
"""

from __future__ import annotations

from torchhealth.collectors.base import Arrays, Collector, State, host_values
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

    def state(self) -> State:
        return {"skipped": (host_values([self.skipped]), "mean")}

    def finish(self, state: Arrays, snapshot: Snapshot, interval_start: int) -> None:
        if "skipped" in state:
            snapshot.skipped_steps = round(float(state["skipped"][0]))

    def reset_interval(self) -> None:
        self.skipped = 0

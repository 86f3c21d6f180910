"""AMP: optimizer steps that GradScaler skipped, counted on the host (skips are decided on the host).

The count is still sent through the check's reduction (as a mean over ranks), so every rank's
snapshot, and so every rank's decisions, carry the same number.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch

from torchhealth.amp import ScalerStepWatch, overflow_hint
from torchhealth.collectors.base import Arrays, Collector, State, host_values
from torchhealth.snapshot import Snapshot

logger = logging.getLogger("torchhealth")


class SkippedStepCollector(Collector):
    """Counts skipped optimizer steps per check interval into ``Snapshot.skipped_steps``.

    A GradScaler skips a step when the scaled gradients overflowed; that is how AMP finds its
    scale, not a training problem, so skipped steps are counted instead of being checked.

    Args:
        scaler: The GradScaler of a loop that calls ``monitor.step`` itself (``Monitor(scaler=)``):
            its ``step`` is watched to count the steps it skips. None where something else counts
            them (``watch``, the Lightning and Hugging Face callbacks) or there is no scaler.
        optimizer: The optimizer the scaler steps (with ``scaler``).
        on_skip: Called after each skipped step of the explicit loop, after it is counted.
        under_fp16_autocast: Whether the model's forwards ran under fp16 autocast: without a
            scaler, non-finite gradients with a finite loss then get one hint to pass it.
    """

    def __init__(self, scaler: Any = None, optimizer: torch.optim.Optimizer | None = None,
                 on_skip: Callable[[], None] | None = None,
                 under_fp16_autocast: Callable[[], bool] = lambda: False) -> None:
        self.skipped = 0
        self.scaler = scaler
        self._on_skip = on_skip
        self._under_fp16_autocast = under_fp16_autocast
        self._hinted = scaler is not None
        self._watch = ScalerStepWatch(scaler, optimizer, self._skipped) if scaler is not None else None

    def record(self) -> None:
        """Counts one skipped optimizer step."""
        self.skipped += 1

    def _skipped(self) -> None:
        self.record()
        if self._on_skip is not None:
            self._on_skip()

    def state(self) -> State:
        return {"skipped": (host_values([self.skipped]), "mean")}

    def finish(self, state: Arrays, snapshot: Snapshot, interval_start: int) -> None:
        if "skipped" in state:
            snapshot.skipped_steps = round(float(state["skipped"][0]))
        if not self._hinted and snapshot.nonfinite and self._under_fp16_autocast():
            hint = overflow_hint(snapshot)
            if hint is not None:
                self._hinted = True
                logger.warning(hint)

    def reset_interval(self) -> None:
        self.skipped = 0

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()

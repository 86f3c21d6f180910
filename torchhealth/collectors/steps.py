"""AMP: optimizer steps that GradScaler skipped, counted on the host (skips are decided on the host).

The count is still sent through the check's reduction (as a mean over ranks), so every rank's
snapshot, and so every rank's decisions, carry the same number.
"""

from __future__ import annotations

import logging
from typing import Any

from torchhealth.amp import ScalerStepWatch, overflow_hint
from torchhealth.collectors.base import Arrays, AttachContext, Collector, State, host_values
from torchhealth.records import Snapshot

logger = logging.getLogger("torchhealth")


class SkippedStepCollector(Collector):
    """Counts skipped optimizer steps per check interval into ``Snapshot.skipped_steps``.

    A GradScaler skips a step when the scaled gradients overflowed; that is how AMP finds its
    scale, not a training problem, so skipped steps are counted instead of being checked. Skips
    arrive as ``on_skipped_step`` events: from ``Monitor.record_skipped_step`` (``watch``, the
    Lightning and Hugging Face callbacks), or, for a loop that calls ``monitor.step`` itself and
    passed ``Monitor(scaler=)``, from the scaler's ``step``, which this collector watches.

    Without a scaler, non-finite gradients with a finite loss and finite activations in a run
    whose forwards ran under fp16 autocast get one warning that names ``scaler=``.
    """

    name = "skipped_steps"

    def __init__(self) -> None:
        self.skipped = 0
        self._facts: Any = None
        self._hinted = False
        self._watch: ScalerStepWatch | None = None

    def attach(self, context: AttachContext) -> bool:
        self._facts = context.facts
        if context.scaler is not None:
            self._hinted = True
            self._watch = ScalerStepWatch(context.scaler, context.optimizer, context.skipped_step)
        return True

    def record(self) -> None:
        """Counts one skipped optimizer step."""
        self.skipped += 1

    def on_skipped_step(self, recorded: bool) -> None:
        self.record()

    def pending(self) -> bool:
        return self.skipped > 0

    def state(self) -> State:
        return {"skipped": (host_values([self.skipped]), "mean")}

    def finish(self, state: Arrays, snapshot: Snapshot, interval_start: int) -> None:
        if "skipped" in state:
            snapshot.skipped_steps = round(float(state["skipped"][0]))
        if not self._hinted and snapshot.nonfinite and self._facts is not None and self._facts.under_fp16_autocast:
            hint = overflow_hint(snapshot)
            if hint is not None:
                self._hinted = True
                logger.warning(hint)

    def reset_interval(self) -> None:
        self.skipped = 0

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None

"""loss_divergence: the training loss climbs out of control, above where training started."""

from __future__ import annotations

from torchhealth.detectors.alert import Alert
from torchhealth.detectors.base import Detector
from torchhealth.detectors.episodes import MODEL
from torchhealth.detectors.trends import median
from torchhealth.facts import ModelFacts
from torchhealth.snapshot import Snapshot

RISE = 2.0
"""Loss above this multiple of its starting level (and still rising) is divergence."""
CRITICAL_RISE = 10.0


class LossDivergence(Detector):
    """Compares the loss with its starting level (median of the first 3 checks).

    Late-training bounces (0.01 -> 0.05) stay far below the starting level and are not divergence.
    """

    kind = "loss_divergence"

    def check(self, snapshot: Snapshot, facts: ModelFacts) -> list[Alert]:
        if snapshot.loss is None:
            return []
        losses = self.remember("loss", snapshot.loss)
        start = median(losses[:3])
        if len(losses) < 2 or start <= 0:
            return []
        rise = snapshot.loss / start
        rising = snapshot.loss > losses[-2]
        if rise >= CRITICAL_RISE or (rise >= RISE and rising):
            severity = "critical" if rise >= CRITICAL_RISE else "warning"
            evidence = {"loss": snapshot.loss, "start_loss": start, "rise": rise, "best_loss": min(losses)}
            return self.episode(MODEL, facts, step=snapshot.step, severity=severity,
                layer=None, value=snapshot.loss, evidence=evidence,
                message=f"training loss {snapshot.loss:.4g} is {rise:.3g}x its starting level {start:.4g} and rising")
        if rise < RISE:
            self.episodes.healthy(MODEL, snapshot.step)
        return []

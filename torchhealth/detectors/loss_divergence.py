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
START_CHECKS = 3
"""Checks whose lowest loss is the starting level."""


class LossDivergence(Detector):
    """Compares the loss with its starting level: the lowest of the first ``START_CHECKS`` checks.

    The lowest early value, not their median: a loss that explodes within the first checks would
    otherwise raise its own reference (0.7, 8.5, 20 -> median 8.5), while a loss that starts high and
    falls (a healthy run) only lowers it, which cannot raise a false alarm on a run that keeps falling.
    Late-training bounces (0.01 -> 0.05) stay far below the starting level and are not divergence.
    A warning needs the latest loss AND the median of the last 3 checks at ``RISE`` times the start,
    so one noisy interval (small batches, noisy targets) is not a rise; a single check at
    ``CRITICAL_RISE`` times the start is no noise and is critical at once.
    """

    kind = "loss_divergence"

    def check(self, snapshot: Snapshot, facts: ModelFacts) -> list[Alert]:
        if snapshot.loss is None:
            return []
        losses = self.remember("loss", snapshot.loss)
        start = min(self.first("loss", START_CHECKS))
        if len(losses) < 2 or start <= 0:
            return []
        level = median(losses[-3:])
        rise = snapshot.loss / start
        rising = snapshot.loss > losses[-2]
        if rise >= CRITICAL_RISE or (rise >= RISE and level >= RISE * start and rising):
            severity = "critical" if rise >= CRITICAL_RISE else "warning"
            evidence = {"loss": snapshot.loss, "recent_median": level, "start_loss": start, "rise": rise,
                        "best_loss": min(losses)}
            return self.episode(MODEL, facts, step=snapshot.step, severity=severity,
                layer=None, value=snapshot.loss, evidence=evidence,
                message=f"training loss {snapshot.loss:.4g} (recent median {level:.4g}) is {rise:.3g}x its "
                        f"starting level {start:.4g} and rising")
        if rise < RISE:
            self.episodes.healthy(MODEL, snapshot.step)
        return []

"""overfitting: validation loss rises while training loss keeps falling."""

from __future__ import annotations

from torchhealth.records import Alert
from torchhealth.detectors.base import Detector
from torchhealth.detectors.episodes import MODEL
from torchhealth.detectors.trends import consecutive
from torchhealth.facts import ModelFacts
from torchhealth.records import Snapshot

RISE = 0.1
"""Validation loss this far (relative) above its best counts as rising."""
PERSIST = 3
"""Consecutive validation reports that must show the rise."""


class Overfitting(Detector):
    """Needs validation losses (``monitor.step(loss, val_loss=...)`` or ``monitor.log_validation``).

    Args:
        rise: Validation loss this far (relative) above its best counts as rising (``RISE``, 0.1).
        persist: Consecutive validation reports that must show the rise (``PERSIST``, 3).
        recover_after: Healthy checks that close an episode (3).
    """

    kind = "overfitting"
    thresholds = {"rise": "positive", "persist": "count"}

    def __init__(self, *, rise: float = RISE, persist: int = PERSIST,
                 recover_after: int = Detector.recover_after) -> None:
        super().__init__()
        self.configure(recover_after=recover_after, rise=rise, persist=persist)

    def check(self, snapshot: Snapshot, facts: ModelFacts) -> list[Alert]:
        if snapshot.val_loss is None or snapshot.loss is None:
            return []
        vals = self.series.get("val", [])
        if vals and snapshot.val_loss < min(vals):
            self.memory.update(best_step=snapshot.step, train_at_best=snapshot.loss)
        elif not vals:
            self.memory.update(best_step=snapshot.step, train_at_best=snapshot.loss)
        vals = self.remember("val", snapshot.val_loss)
        best = min(vals)
        flags = self.remember("rising", float(snapshot.val_loss > best * (1 + self.rise) if best > 0 else 0))
        train_falling = snapshot.loss < self.memory["train_at_best"]
        if consecutive(flags) >= self.persist and train_falling:
            evidence = {"val_loss": snapshot.val_loss, "best_val_loss": best, "best_val_step": self.memory["best_step"],
                        "train_loss": snapshot.loss, "train_at_best": self.memory["train_at_best"]}
            return self.episode(MODEL, facts, step=snapshot.step, severity="warning",
                layer=None, value=snapshot.val_loss, evidence=evidence,
                message=(f"validation loss {snapshot.val_loss:.4g} is {snapshot.val_loss / best - 1:.0%} above its best "
                         f"({best:.4g} at step {self.memory['best_step']}) while training loss fell from "
                         f"{self.memory['train_at_best']:.4g} to {snapshot.loss:.4g}"))
        if not flags[-1]:
            self.episodes.healthy(MODEL, snapshot.step)
        return []

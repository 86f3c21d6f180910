"""loss_plateau: training makes no progress from where it started."""

from __future__ import annotations

from torchhealth.records import Alert
from torchhealth.detectors.base import LOSS, Detector
from torchhealth.detectors.episodes import MODEL
from torchhealth.detectors.trends import median, progress
from torchhealth.facts import ModelFacts
from torchhealth.records import Snapshot

WINDOW = 10
"""Checks over which recent progress is measured (100 steps with the default check_every)."""
MIN_RECENT = 0.01
MIN_TOTAL = 0.1


class LossPlateau(Detector):
    """Flags a loss that moved less than 1% over ``WINDOW`` checks and less than 10% since the start.

    A run that learned and then levelled off has converged (or plateaued at a level only the user can
    judge); only a run that never got anywhere is flagged. A run whose LR scheduler is still warming up
    (the rate below the schedule's base and higher than ``WINDOW`` checks ago) gets no verdict: a long
    warmup starts from a rate too small to move the loss, by design.

    Args:
        window: Checks over which recent progress is measured (``WINDOW``, 10).
        min_recent: Relative progress over ``window`` below which the loss is flat (``MIN_RECENT``, 0.01).
        min_total: Relative progress since the start below which the run got nowhere (``MIN_TOTAL``, 0.1).
        recover_after: Healthy checks that close an episode (3).
    """

    kind = "loss_plateau"
    thresholds = {"window": "count", "min_recent": "positive", "min_total": "positive"}

    def __init__(self, *, window: int = WINDOW, min_recent: float = MIN_RECENT, min_total: float = MIN_TOTAL,
                 recover_after: int = Detector.recover_after) -> None:
        super().__init__()
        self.configure(recover_after=recover_after, window=window, min_recent=min_recent, min_total=min_total)

    def check(self, snapshot: Snapshot, facts: ModelFacts) -> list[Alert]:
        ratios = snapshot.family("update_ratio")
        if ratios:  # measured on log steps only: the latest is kept for the evidence
            self.memory["update_ratio"] = median(list(ratios.values()))
        warming = self._warming_up(facts)
        if snapshot.loss is None:
            return []
        losses = self.remember_loss(snapshot)
        if warming:  # a learning rate still on its way up to the schedule's base moves little: no verdict yet
            return []
        recent = progress(losses, self.window)
        if recent is None:
            return []
        start = median(self.first_checks(LOSS))
        total = (start - median(losses[-3:])) / max(abs(start), 1e-12)
        if abs(recent) < self.min_recent and total < self.min_total:
            evidence = {"recent_progress": recent, "total_progress": total, "start_loss": start,
                        "loss": snapshot.loss, "update_ratio": self.memory.get("update_ratio")}
            return self.episode(MODEL, facts, step=snapshot.step, severity="warning",
                layer=None, value=snapshot.loss, evidence=evidence,
                message=(f"training loss {snapshot.loss:.4g} moved {recent:+.1%} over the last {self.window} checks and "
                         f"{total:+.1%} since the start ({start:.4g})"))
        self.episodes.healthy(MODEL, snapshot.step)
        return []

    def _warming_up(self, facts: ModelFacts) -> bool:
        """True while an LR scheduler's warmup holds the rate below its base and the rate rose over the window."""
        found = facts.group()
        if found is None or not found[1].get("lr"):
            return False
        lr, base = float(found[1]["lr"]), found[1].get("initial_lr")
        rates = self.remember("lr", lr)
        return bool(base) and lr < base and len(rates) > 1 and lr > rates[-min(len(rates), self.window + 1)]

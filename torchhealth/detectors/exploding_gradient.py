"""exploding_gradient: the total gradient norm grows far beyond the model's own earlier scale."""

from __future__ import annotations

import math

from torchhealth.records import Alert
from torchhealth.detectors.base import LOSS, Detector, ordered
from torchhealth.detectors.episodes import MODEL
from torchhealth.detectors.trends import median
from torchhealth.facts import ModelFacts
from torchhealth.formatting import fmt
from torchhealth.records import TOTAL, Snapshot

GROWTH = 10.0
"""Norm / reference scale that counts as growth out of control (with the loss not improving)."""
CRITICAL_GROWTH = 1000.0
RECOVERED_GROWTH = 3.0
LOSS_SLACK = 1.05
"""The loss counts as improving while it is within 5% of its best value so far."""
RECENT = 10
"""Checks of healthy norms whose median is the run's recent level; a run with this many has a phase to compare with."""
SPIKE_CHECKS = 3
"""Checks a growth must last, once the run has a recent level, to be an explosion rather than a spike."""


class ExplodingGradient(Detector):
    """Flags gradient norms that grew ``GROWTH`` times past the model's reference scale.

    The reference follows the run: the larger of its starting level (median of the norms checked in its
    first ``START_STEPS`` steps, up to 3, not one step where the loss trip-wire added checks: the first
    steps of Adam/Adadelta often spike) and its recent level (median of the last
    ``RECENT`` healthy norms). Norms measured while the loss improves are healthy whatever their size,
    so a net that leaves an initial plateau (norms rising 10-30x as it starts learning) moves its
    reference with it; large-but-falling norms and late-training bounces (norms that shrank near
    convergence and bounce back, still below the starting level) are not growth.

    Growth only counts while the loss is not improving; a sudden jump (10x the previous check, to
    ``CRITICAL_GROWTH`` times the reference) is critical on its own, and so is an overflow after the
    loss grew by orders of magnitude. Once the run has a recent level, a growth short of critical is
    first an advisory ``gradient_spike`` (with its step, so the batch can be found and skipped) and
    becomes ``exploding_gradient`` only if it lasts ``SPIKE_CHECKS`` checks. A loss that has taken both
    signs (policy gradients and other surrogate objectives, often summed over a variable number of
    terms, so that their scale follows the data: an episode's length) cannot say whether training
    improves: a new level of the norm becomes the reference, and only a norm that grows another
    ``RECOVERED_GROWTH`` times past its spike is an explosion. Steps skipped by AMP's GradScaler are
    ignored.

    Args:
        growth: Norm / reference scale that counts as growth (``GROWTH``, 10).
        critical_growth: Growth that is critical, and a sudden jump's size (``CRITICAL_GROWTH``, 1000).
        recovered_growth: Growth below which the run is healthy again (``RECOVERED_GROWTH``, 3).
        loss_slack: The loss improves while at most this multiple of its best (``LOSS_SLACK``, 1.05).
        recent: Healthy norms whose median is the recent level (``RECENT``, 10).
        spike_checks: Checks a growth must last to be an explosion, not a spike (``SPIKE_CHECKS``, 3).
        recover_after: Healthy checks that close an episode (3).
    """

    kind = "exploding_gradient"
    thresholds = {"growth": "positive", "critical_growth": "positive", "recovered_growth": "positive",
                  "loss_slack": "positive", "recent": "count", "spike_checks": "count"}

    def __init__(self, *, growth: float = GROWTH, critical_growth: float = CRITICAL_GROWTH,
                 recovered_growth: float = RECOVERED_GROWTH, loss_slack: float = LOSS_SLACK, recent: int = RECENT,
                 spike_checks: int = SPIKE_CHECKS, recover_after: int = Detector.recover_after) -> None:
        super().__init__()
        self.configure(recover_after=recover_after, growth=growth, critical_growth=critical_growth,
                       recovered_growth=recovered_growth, loss_slack=loss_slack, recent=recent,
                       spike_checks=spike_checks)
        ordered(type(self).__name__, ("recovered_growth", recovered_growth), ("growth", growth),
                ("critical_growth", critical_growth))

    def check(self, snapshot: Snapshot, facts: ModelFacts) -> list[Alert]:
        norms = snapshot.family("grad_norm")
        norm = norms.get(TOTAL)
        if norm is None or (snapshot.skipped_steps and not math.isfinite(norm)):
            return []
        history = self.series.get("norm", [])
        losses = self.series.get(LOSS, [])
        best_loss = min(losses) if losses else None
        if not math.isfinite(norm):
            return self._overflow(snapshot, facts, norm, history, best_loss)
        if snapshot.loss is not None:
            self.remember_loss(snapshot)
        layer_refs = self.memory.setdefault("layer_first", {})
        signed = self._signed(snapshot.loss)
        if not history:
            self.remember("norm", norm, snapshot.step)
            self.memory["previous"] = norm
            layer_refs.update({k: v for k, v in norms.items() if k != TOTAL and math.isfinite(v) and v > 0})
            return []
        reference = self.reference(history)
        growth = norm / reference if reference > 0 else (math.inf if norm > 0 else 1.0)
        improving = snapshot.loss is not None and best_loss is not None and snapshot.loss <= best_loss * self.loss_slack
        sudden = growth >= self.critical_growth and norm >= self.growth * self.memory.get("previous", norm)
        self.memory["previous"] = norm
        spike = self.memory.get("spike")
        # a loss of both signs (a policy-gradient or other surrogate objective, often a sum over a variable
        # number of terms) says nothing about improvement, and its scale follows the data: a new level of the
        # norm is followed, and only a norm that keeps growing past its spike is an explosion
        still_growing = not signed or (spike is not None and norm >= self.recovered_growth * spike["norm"])
        if growth < self.growth or (improving and not sudden) or (signed and not sudden and not still_growing):
            self.remember("norm", norm, snapshot.step)  # norms of an explosion never become the reference
        if sudden or (growth >= self.growth and not improving):
            severity = "critical" if growth >= self.critical_growth else "warning"
            established = len(history) >= self.recent or signed
            if severity == "warning" and established and (spike is None or spike["checks"] < self.spike_checks
                                                          or not still_growing):
                return self._spike(snapshot, facts, norm, reference, growth)
            culprit = self._culprit(norms, layer_refs, facts)
            evidence = {"norm": norm, "reference_norm": reference, "growth": growth, "healthy_norm": reference,
                        "loss": snapshot.loss, "best_loss": best_loss, "layers": [culprit] if culprit else []}
            if spike is not None:
                evidence["spike_step"] = spike["step"]
            where = f"; fastest-growing layer `{culprit}`" if culprit else ""
            lasted = f" for {spike['checks']} checks since step {spike['step']}" if spike is not None else ""
            return self.episode(MODEL, facts, step=snapshot.step, severity=severity,
                layer=culprit, value=norm, evidence=evidence,
                message=(f"total gradient norm {fmt(norm)} is "
                         + (f"{fmt(growth)}x its reference scale {fmt(reference)}" if reference > 0 else
                            "up from a reference scale of exactly 0")
                         + f"{lasted} while the loss is not improving{where}"))
        if growth < self.recovered_growth:
            self.memory.pop("spike", None)
            self.episodes.healthy(MODEL, snapshot.step)
        return []

    def reference(self, history: list[float]) -> float:
        """The scale a norm is compared with: the larger of the starting and the recent level."""
        return max(median(self.first("norm")), median(history[-self.recent:]))

    def _signed(self, loss: float | None) -> bool:
        """True once the loss has been both negative and positive (kept for good)."""
        if loss is not None and math.isfinite(loss) and loss != 0:
            signs = self.memory.setdefault("loss_signs", [])
            if (loss > 0) not in signs:
                signs.append(loss > 0)
        return len(self.memory.get("loss_signs", [])) == 2

    def _spike(self, snapshot: Snapshot, facts: ModelFacts, norm: float, reference: float, growth: float) -> list[Alert]:
        """A growth past ``GROWTH`` in a run with a recent level: advisory at once, an explosion if it lasts."""
        spike = self.memory.get("spike")
        if spike is not None:
            spike["checks"] += 1
            return []
        self.memory["spike"] = {"step": snapshot.step, "checks": 1, "norm": norm}
        evidence = {"norm": norm, "reference_norm": reference, "growth": growth, "healthy_norm": reference,
                    "spike_step": snapshot.step, "loss": snapshot.loss}
        return [self.make_alert(facts, kind="gradient_spike", layer=None, step=snapshot.step, severity="info",
                                value=norm, evidence=evidence,
                                message=(f"total gradient norm {fmt(norm)} is {fmt(growth)}x the run's recent level "
                                         f"{fmt(reference)} in the steps up to {snapshot.step}; if it falls back "
                                         f"within {self.spike_checks} checks it was a batch, if it stays it is an "
                                         f"explosion"))]

    def _overflow(self, snapshot: Snapshot, facts: ModelFacts, norm: float, history: list[float],
                  best_loss: float | None) -> list:
        """Gradients went non-finite between checks: an explosion if the loss grew by orders of magnitude first.

        A NaN loss that appears without growth (log(0), 0/0) is the ``nonfinite`` detector's alone.
        """
        # growth is a ratio to the best loss: undefined for a best loss of zero or below (losses such as
        # negative log-likelihoods), where nothing is claimed
        if (not history or best_loss is None or best_loss <= 0 or snapshot.loss is None
                or snapshot.loss < self.critical_growth * best_loss):
            return []
        growth = snapshot.loss / best_loss
        evidence = {"norm": norm, "reference_norm": self.reference(history), "healthy_norm": self.reference(history),
                    "loss_growth": growth, "loss": snapshot.loss, "best_loss": best_loss,
                    "first_nonfinite": min(snapshot.nonfinite.values(), default=snapshot.step)}
        return self.episode(MODEL, facts, step=snapshot.step, severity="critical", layer=None, value=norm,
                            evidence=evidence,
                            message=(f"gradients overflowed to {norm} after the loss grew {growth:.3g}x within "
                                     f"one check interval (finite mean {snapshot.loss:.3g} vs best {best_loss:.3g})"))

    @staticmethod
    def _culprit(norms: dict[str, float], first: dict[str, float], facts: ModelFacts) -> str | None:
        ratios = {k: (v / first[k] if math.isfinite(v) else math.inf) for k, v in norms.items() if k in first}
        if not ratios:
            return None
        top = max(ratios.values())
        return facts.in_forward_order([k for k, r in ratios.items() if r == top])[0]

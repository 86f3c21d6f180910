"""exploding_gradient: the total gradient norm grows far beyond the model's own earlier scale."""

from __future__ import annotations

import math

from torchhealth.detectors.alert import Alert
from torchhealth.detectors.base import Detector
from torchhealth.detectors.episodes import MODEL
from torchhealth.detectors.trends import median
from torchhealth.facts import ModelFacts
from torchhealth.snapshot import TOTAL, Snapshot

GROWTH = 10.0
"""Norm / reference scale that counts as growth out of control (with the loss not improving)."""
CRITICAL_GROWTH = 1000.0
RECOVERED_GROWTH = 3.0
LOSS_SLACK = 1.05
"""The loss counts as improving while it is within 5% of its best value so far."""


class ExplodingGradient(Detector):
    """Flags gradient norms that grew ``GROWTH`` times past the model's reference scale.

    The reference scale is the larger of the first measured norm and the median of earlier norms
    (outside explosions), so large-but-falling norms (regression on big targets) and late-training bounces (norms
    that shrank near convergence and bounce back, still below the early scale) are not growth.
    Growth only counts while the loss is not improving; a sudden jump (10x the previous check, to
    ``CRITICAL_GROWTH`` times the reference) is critical on its own, and so is an overflow after the
    loss grew by orders of magnitude. Steps skipped by AMP's GradScaler are ignored.
    """

    kind = "exploding_gradient"

    def check(self, snapshot: Snapshot, facts: ModelFacts) -> list[Alert]:
        norms = snapshot.family("grad_norm")
        norm = norms.get(TOTAL)
        if norm is None or (snapshot.skipped_steps and not math.isfinite(norm)):
            return []
        history = self.series.get("norm", [])
        losses = self.series.get("loss", [])
        best_loss = min(losses) if losses else None
        if not math.isfinite(norm):
            return self._overflow(snapshot, facts, norm, history, best_loss)
        if snapshot.loss is not None:
            self.remember("loss", snapshot.loss)
        layer_refs = self.memory.setdefault("layer_first", {})
        if not history:
            self.remember("norm", norm)
            self.memory["previous"] = norm
            layer_refs.update({k: v for k, v in norms.items() if k != TOTAL and math.isfinite(v) and v > 0})
            return []
        reference = max(self.first("norm", 1)[0], median(history))
        growth = norm / reference if reference > 0 else math.inf
        if math.isfinite(norm) and growth < GROWTH:
            self.remember("norm", norm)  # norms of an explosion never become the reference
        improving = snapshot.loss is not None and best_loss is not None and snapshot.loss <= best_loss * LOSS_SLACK
        sudden = growth >= CRITICAL_GROWTH and norm >= GROWTH * self.memory.get("previous", norm)
        self.memory["previous"] = norm
        if sudden or (growth >= GROWTH and not improving):
            severity = "critical" if growth >= CRITICAL_GROWTH else "warning"
            culprit = self._culprit(norms, layer_refs, facts)
            evidence = {"norm": norm, "reference_norm": reference, "growth": growth, "healthy_norm": reference,
                        "loss": snapshot.loss, "best_loss": best_loss, "layers": [culprit] if culprit else []}
            where = f"; fastest-growing layer `{culprit}`" if culprit else ""
            return self.episode(MODEL, facts, step=snapshot.step, severity=severity,
                layer=culprit, value=norm, evidence=evidence,
                message=(f"total gradient norm {norm:.3g} is {growth:.3g}x its reference scale {reference:.3g} "
                         f"while the loss is not improving{where}"))
        if growth < RECOVERED_GROWTH:
            self.episodes.healthy(MODEL, snapshot.step)
        return []

    def _overflow(self, snapshot: Snapshot, facts: ModelFacts, norm: float, history: list[float],
                  best_loss: float | None) -> list:
        """Gradients went non-finite between checks: an explosion if the loss grew by orders of magnitude first.

        A NaN loss that appears without growth (log(0), 0/0) is the ``nonfinite`` detector's alone.
        """
        # growth is a ratio to the best loss: undefined for a best loss of zero or below (losses such as
        # negative log-likelihoods), where nothing is claimed
        if (not history or best_loss is None or best_loss <= 0 or snapshot.loss is None
                or snapshot.loss < CRITICAL_GROWTH * best_loss):
            return []
        growth = snapshot.loss / best_loss
        evidence = {"norm": norm, "reference_norm": self.first("norm", 1)[0], "healthy_norm": max(self.first("norm", 1)[0], median(history)),
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

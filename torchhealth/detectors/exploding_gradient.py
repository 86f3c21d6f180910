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

    The reference scale is the larger of the first measured norm and the median of all earlier
    norms, so large-but-falling norms (regression on big targets) and late-training bounces (norms
    that shrank near convergence and bounce back, still below the early scale) are not growth.
    Growth only counts while the loss is not improving; a jump of ``CRITICAL_GROWTH`` or an overflow
    to +inf is critical on its own. Steps skipped by AMP's GradScaler are ignored.
    """

    kind = "exploding_gradient"

    def check(self, snapshot: Snapshot, facts: ModelFacts) -> list[Alert]:
        norms = snapshot.family("grad_norm")
        norm = norms.get(TOTAL)
        if norm is None or math.isnan(norm) or (snapshot.skipped_steps and not math.isfinite(norm)):
            return []
        history = self.series.get("norm", [])
        losses = self.series.get("loss", [])
        best_loss = min(losses) if losses else None
        if snapshot.loss is not None:
            self.remember("loss", snapshot.loss)
        layer_refs = self.memory.setdefault("layer_first", {})
        if not history:
            self.remember("norm", norm)
            layer_refs.update({k: v for k, v in norms.items() if k != TOTAL and math.isfinite(v) and v > 0})
            return []
        reference = max(history[0], median(history))
        growth = norm / reference if reference > 0 else math.inf
        if math.isfinite(norm):
            self.remember("norm", norm)
        improving = snapshot.loss is not None and best_loss is not None and snapshot.loss <= best_loss * LOSS_SLACK
        if growth >= CRITICAL_GROWTH or (growth >= GROWTH and not improving):
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

    @staticmethod
    def _culprit(norms: dict[str, float], first: dict[str, float], facts: ModelFacts) -> str | None:
        ratios = {k: (v / first[k] if math.isfinite(v) else math.inf) for k, v in norms.items() if k in first}
        if not ratios:
            return None
        top = max(ratios.values())
        return facts.in_forward_order([k for k, r in ratios.items() if r == top])[0]

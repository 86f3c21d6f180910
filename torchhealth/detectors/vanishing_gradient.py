"""vanishing_gradient: lower layers' gradients collapse relative to upper layers while training stalls."""

from __future__ import annotations

import math

from torchhealth.records import Alert
from torchhealth.detectors.base import LOSS, Detector, ordered
from torchhealth.detectors.episodes import MODEL
from torchhealth.detectors.trends import consecutive, stalled
from torchhealth.facts import ModelFacts
from torchhealth.formatting import fmt
from torchhealth.records import TOTAL, Snapshot

RATIO = 1e-3
"""Lower-layer / upper-layer gradient norm below this counts as vanished."""
CRITICAL_RATIO = 1e-6
PERSIST = 5
"""Consecutive checks the ratio must stay low (one quiet step is not vanishing)."""
STALL_WINDOW = 5
MIN_LAYERS = 3


class VanishingGradient(Detector):
    """Compares the gradient norms of the lowest and highest third of weight layers (forward order).

    Alerts when the lower/upper ratio stays below ``RATIO`` for ``PERSIST`` checks and the loss
    moved less than 5% over the last ``STALL_WINDOW`` checks.

    Args:
        ratio: Lower/upper gradient norm ratio below which gradients vanished (``RATIO``, 1e-3).
        critical_ratio: Ratio below which it is critical (``CRITICAL_RATIO``, 1e-6).
        persist: Consecutive checks the ratio must stay low (``PERSIST``, 5).
        stall_window: Checks over which the loss must have stalled (``STALL_WINDOW``, 5).
        min_layers: Weight layers with gradients needed to compare thirds (``MIN_LAYERS``, 3).
        recover_after: Healthy checks that close an episode (3).
    """

    kind = "vanishing_gradient"
    thresholds = {"ratio": "ratio", "critical_ratio": "ratio", "persist": "count", "stall_window": "count",
                  "min_layers": "count"}

    def __init__(self, *, ratio: float = RATIO, critical_ratio: float = CRITICAL_RATIO, persist: int = PERSIST,
                 stall_window: int = STALL_WINDOW, min_layers: int = MIN_LAYERS,
                 recover_after: int = Detector.recover_after) -> None:
        super().__init__()
        self.configure(recover_after=recover_after, ratio=ratio, critical_ratio=critical_ratio, persist=persist,
                       stall_window=stall_window, min_layers=min_layers)
        ordered(type(self).__name__, ("critical_ratio", critical_ratio), ("ratio", ratio))

    def check(self, snapshot: Snapshot, facts: ModelFacts) -> list[Alert]:
        norms = {k: v for k, v in snapshot.family("grad_norm").items() if k != TOTAL}
        if snapshot.loss is not None:
            self.remember_loss(snapshot)
        layers = [layer for layer in facts.weight_layers if layer in norms]
        if len(layers) < self.min_layers:
            layers = list(norms)
        if len(layers) < self.min_layers or not all(math.isfinite(norms[layer]) for layer in layers):
            return []
        layers = facts.in_forward_order(layers)
        third = max(1, len(layers) // 3)
        lower, upper = layers[:third], layers[-third:]
        low = _geomean([norms[layer] for layer in lower])
        high = _geomean([norms[layer] for layer in upper])
        ratio = low / high if high > 0 else 1.0
        low_flags = self.remember("low", float(ratio < self.ratio))
        if consecutive(low_flags) >= self.persist and stalled(self.series.get(LOSS, []), self.stall_window):
            severity = "critical" if ratio < self.critical_ratio else "warning"
            evidence = {"ratio": ratio, "lower_norm": low, "upper_norm": high, "lower_layers": lower,
                        "upper_layers": upper, "layers": lower, "checks_low": consecutive(low_flags)}
            return self.episode(MODEL, facts, step=snapshot.step, severity=severity,
                layer=lower[0], value=ratio, evidence=evidence,
                message=_message(low, high, ratio, lower, upper, consecutive(low_flags)))
        if ratio >= self.ratio:
            self.episodes.healthy(MODEL, snapshot.step)
        return []


def _message(low: float, high: float, ratio: float, lower: list[str], upper: list[str], checks: int) -> str:
    if low == 0:
        return (f"the lower layers (from `{lower[0]}`) get no gradient at all (norm exactly 0) while the upper "
                f"layers' norm is {fmt(high)} (up to `{upper[-1]}`), for {checks} checks while the loss stalls")
    return (f"gradient norm of the lower layers ({fmt(low)}, from `{lower[0]}`) is {fmt(ratio, 2)} times the upper "
            f"layers' ({fmt(high)}, up to `{upper[-1]}`) for {checks} checks while the loss stalls")


def _geomean(values: list[float]) -> float:
    if any(v <= 0 for v in values):
        return 0.0
    return math.exp(sum(math.log(v) for v in values) / len(values))

"""saturated_activation: sigmoid/tanh outputs stuck at their extremes, check after check."""

from __future__ import annotations

import math

from torchhealth.records import Alert
from torchhealth.detectors.base import Detector, ordered
from torchhealth.detectors.trends import consecutive
from torchhealth.facts import ModelFacts
from torchhealth.records import Snapshot

SATURATED_SHARE = 1 / 3
"""Share of a hidden site's outputs at the extremes (|tanh| > 0.97, sigmoid within 0.03 of 0 or 1) that is saturated.

Healthy hidden sigmoid/tanh layers keep a few percent of their outputs there (0-3% in every healthy
benchmark run); a third means a third of the layer's gradient paths run at <= 6% (tanh) / <= 12%
(sigmoid) of their full slope, check after check: the layer learns at a fraction of its speed even
while the loss still falls, and the fixes (Xavier init, normalized inputs, ReLU) cost nothing.
"""
CRITICAL_SHARE = 0.9
PERSIST = 5
"""Consecutive checks (50 steps by default) the share must stay high: transient saturation is not flagged."""
RECOVERED_SHARE = 0.2


class SaturatedActivation(Detector):
    """Flags sigmoid/tanh sites whose outputs sit at the extremes for ``PERSIST`` checks.

    Two kinds of site are expected to saturate and are skipped: the model's output activation (no
    weight layer after it in forward order, e.g. the sigmoid of a binary classifier), which saturates
    as predictions become confident; and gates (a sigmoid/tanh that runs right next to another
    activation with no weight layer in between, as the i/f/o gates and cell tanh of a hand-written
    LSTM/GRU cell do), where a gate at 0 or 1 is how the cell forgets or keeps its state.

    Args:
        saturated_share: Share of a site's outputs at the extremes that is saturated (``SATURATED_SHARE``, 1/3).
        critical_share: Share that is critical (``CRITICAL_SHARE``, 0.9).
        persist: Consecutive checks the share must stay high (``PERSIST``, 5).
        recovered_share: Share below which the site is healthy again (``RECOVERED_SHARE``, 0.2).
        recover_after: Healthy checks that close an episode (3).
    """

    kind = "saturated_activation"
    thresholds = {"saturated_share": "share", "critical_share": "share", "persist": "count",
                  "recovered_share": "share"}

    def __init__(self, *, saturated_share: float = SATURATED_SHARE, critical_share: float = CRITICAL_SHARE,
                 persist: int = PERSIST, recovered_share: float = RECOVERED_SHARE,
                 recover_after: int = Detector.recover_after) -> None:
        super().__init__()
        self.configure(recover_after=recover_after, saturated_share=saturated_share, critical_share=critical_share,
                       persist=persist, recovered_share=recovered_share)
        ordered(type(self).__name__, ("recovered_share", recovered_share), ("saturated_share", saturated_share),
                ("critical_share", critical_share))

    def check(self, snapshot: Snapshot, facts: ModelFacts) -> list[Alert]:
        alerts = []
        for site, share in snapshot.family("saturation").items():
            if not math.isfinite(share) or _is_output(site, facts) or _is_gate(site, facts):
                continue
            flags = self.remember(f"high:{site}", float(share >= self.saturated_share))
            if consecutive(flags) < self.persist:
                if share < self.recovered_share:
                    self.episodes.healthy(site, snapshot.step)
                continue
            severity = "critical" if share >= self.critical_share else "warning"
            kind = facts.activations.get(site, "activation")
            evidence = {"saturated_share": share, "checks": consecutive(flags), "layers": [site]}
            alerts += self.episode(site, facts, step=snapshot.step, severity=severity,
                layer=site, value=share, evidence=evidence,
                message=(f"{share:.0%} of the {kind} outputs of `{site}` are within 0.03 of their extremes, for "
                         f"{consecutive(flags)} checks: their gradient is almost zero"))
        return alerts


def _is_output(site: str, facts: ModelFacts) -> bool:
    order = facts.forward_order
    if site not in order:
        return False
    weights = set(facts.weight_layers)
    return not any(layer in weights for layer in order[order.index(site) + 1:])


def _is_gate(site: str, facts: ModelFacts) -> bool:
    """True when the nearest weight layer/activation before or after ``site`` in forward order is an activation.

    In a plain stack weight layers and activations alternate; activations side by side are gates
    computed from the same pre-activations (chunks of one Linear) and combined by multiplication.
    """
    order = [name for name in facts.forward_order if name in facts.activations or name in set(facts.weight_layers)]
    if site not in order:
        return False
    i = order.index(site)
    neighbours = order[max(i - 1, 0):i] + order[i + 1:i + 2]
    return any(name in facts.activations for name in neighbours)

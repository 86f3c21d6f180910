"""saturated_activation: sigmoid/tanh outputs stuck at their extremes, check after check."""

from __future__ import annotations

import math

from torchhealth.detectors.alert import Alert
from torchhealth.detectors.base import Detector
from torchhealth.detectors.trends import consecutive
from torchhealth.facts import ModelFacts
from torchhealth.snapshot import Snapshot

SATURATED_SHARE = 0.5
"""Share of a site's outputs within 0.03 of the extremes that counts as saturated."""
CRITICAL_SHARE = 0.9
PERSIST = 3
RECOVERED_SHARE = 0.3


class SaturatedActivation(Detector):
    """Flags sigmoid/tanh sites whose outputs sit at the extremes for ``PERSIST`` checks.

    The model's output activation (no weight layer after it in forward order, e.g. the sigmoid of a
    binary classifier) is expected to saturate as predictions become confident and is skipped.
    """

    kind = "saturated_activation"

    def check(self, snapshot: Snapshot, facts: ModelFacts) -> list[Alert]:
        alerts = []
        for site, share in snapshot.family("saturation").items():
            if not math.isfinite(share) or _is_output(site, facts):
                continue
            flags = self.remember(f"high:{site}", float(share >= SATURATED_SHARE))
            if consecutive(flags) < PERSIST:
                if share < RECOVERED_SHARE:
                    self.episodes.healthy(site, snapshot.step)
                continue
            severity = "critical" if share >= CRITICAL_SHARE else "warning"
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

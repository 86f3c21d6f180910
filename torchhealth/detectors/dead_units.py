"""dead_units: a large share of a ReLU site's units fired for no sample over a whole window."""

from __future__ import annotations

import math

from torchhealth.detectors.alert import Alert
from torchhealth.detectors.base import Detector
from torchhealth.facts import ModelFacts
from torchhealth.snapshot import Snapshot

DEAD_SHARE = 0.5
"""Share of a site's units dead over a window that raises a warning."""
CRITICAL_SHARE = 0.9
RECOVERED_SHARE = 0.25


class DeadUnits(Detector):
    """Judges death per unit over a window of samples (``dead_units``), never by element sparsity.

    A ReLU layer whose outputs are 70% zeros in every batch is healthy as long as every unit fires
    for some input; only units that fired for no sample of a window count as dead.
    """

    kind = "dead_units"
    recover_after = 2

    def check(self, snapshot: Snapshot, facts: ModelFacts) -> list[Alert]:
        alerts = []
        for site, share in snapshot.family("dead_units").items():
            if not math.isfinite(share):
                continue
            if share < DEAD_SHARE:
                if share < RECOVERED_SHARE:
                    self.episodes.healthy(site, snapshot.step)
                continue
            severity = "critical" if share >= CRITICAL_SHARE else "warning"
            evidence = {"dead_share": share, "window_samples": snapshot.window_samples, "layers": [site],
                        "zero_fraction": snapshot.family("zero_fraction").get(site)}
            feeding = _feeding_layer(site, facts)
            if feeding is not None and feeding in facts.bias_mean:
                evidence["feeding_layer"] = feeding
                evidence["preceding_bias_mean"] = facts.bias_mean[feeding]
            alerts += self.episode(site, facts, step=snapshot.step, severity=severity,
                layer=site, value=share, evidence=evidence,
                message=(f"{share:.0%} of the units of `{site}` fired for none of the last "
                         f"{snapshot.window_samples} samples"))
        return alerts


def _feeding_layer(site: str, facts: ModelFacts) -> str | None:
    """The weight layer that ran last before ``site`` in forward order (its pre-activations' source)."""
    if site not in facts.forward_order:
        return None
    before = facts.forward_order[:facts.forward_order.index(site)]
    weights = set(facts.weight_layers)
    return next((layer for layer in reversed(before) if layer in weights), None)

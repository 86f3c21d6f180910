"""dead_units: a large share of a ReLU site's units fired for no sample over a whole window."""

from __future__ import annotations

import math

from torchhealth.records import Alert
from torchhealth.detectors.base import Detector, ordered
from torchhealth.detectors.trends import consecutive, median
from torchhealth.facts import ModelFacts
from torchhealth.records import Snapshot

DEAD_SHARE = 0.5
"""Share of a site's units dead over a window that raises a warning."""
CRITICAL_SHARE = 0.9
RECOVERED_SHARE = 0.25
SILENT_CHECKS = 3
"""Consecutive check intervals in which a site output only zeros: every unit dead, before a window closes."""


class DeadUnits(Detector):
    """Judges death per unit over a window of samples (``dead_units``), never by element sparsity.

    A ReLU layer whose outputs are 70% zeros in every batch is healthy as long as every unit fires
    for some input; only units that fired for no sample of a window count as dead.

    A window needs ``window_samples`` sampled inputs, which with small batches spans hundreds of
    steps (1024 samples at batch 32, sampling every 10th step: 320 steps). A site that output
    nothing but zeros for ``SILENT_CHECKS`` check intervals in a row is reported before its window
    closes: no unit fired for any sampled input, which is death by the same per-unit definition
    (and element sparsity short of 100% never triggers it). A site where ``DEAD_SHARE`` of the units
    fired for none of the last half window (``silent_units``, counted per unit across windows) gets a
    provisional warning at once; the window that closes confirms it or escalates it to critical.

    Args:
        dead_share: Share of a site's units dead over a window that warns (``DEAD_SHARE``, 0.5).
        critical_share: Share that is critical (``CRITICAL_SHARE``, 0.9).
        recovered_share: Share below which the site is healthy again (``RECOVERED_SHARE``, 0.25).
        silent_checks: Check intervals of only-zero outputs that are death before a window closes
            (``SILENT_CHECKS``, 3).
        recover_after: Healthy checks that close an episode (2).
    """

    kind = "dead_units"
    recover_after = 2
    thresholds = {"dead_share": "share", "critical_share": "share", "recovered_share": "share",
                  "silent_checks": "count"}

    def __init__(self, *, dead_share: float = DEAD_SHARE, critical_share: float = CRITICAL_SHARE,
                 recovered_share: float = RECOVERED_SHARE, silent_checks: int = SILENT_CHECKS,
                 recover_after: int = recover_after) -> None:
        super().__init__()
        self.configure(recover_after=recover_after, dead_share=dead_share, critical_share=critical_share,
                       recovered_share=recovered_share, silent_checks=silent_checks)
        ordered(type(self).__name__, ("recovered_share", recovered_share), ("dead_share", dead_share),
                ("critical_share", critical_share))

    def check(self, snapshot: Snapshot, facts: ModelFacts) -> list[Alert]:
        ratios = snapshot.family("update_ratio")
        if ratios:  # measured on log steps only: the latest is kept for the advice (large updates kill units)
            self.memory["update_ratio"] = median(list(ratios.values()))
        alerts = self._silent_sites(snapshot, facts) + self._provisional(snapshot, facts)
        for site, share in snapshot.family("dead_units").items():
            if not math.isfinite(share):
                continue
            if share < self.dead_share:
                if share < self.recovered_share and snapshot.family("silent_units").get(site, 0.0) < self.dead_share:
                    self.episodes.healthy(site, snapshot.step)
                continue
            severity = "critical" if share >= self.critical_share else "warning"
            evidence = {"dead_share": share, "window_samples": snapshot.window_samples,
                        "zero_fraction": snapshot.family("zero_fraction").get(site)}
            alerts += self._report(site, snapshot, facts, share, severity, evidence,
                                   f"{share:.0%} of the units of `{site}` fired for none of the last "
                                   f"{snapshot.window_samples} samples")
        return alerts

    def _provisional(self, snapshot: Snapshot, facts: ModelFacts) -> list[Alert]:
        """A warning as soon as ``DEAD_SHARE`` of a site's units fired for none of the last half window.

        Units that die early in a window are otherwise reported only when the next whole window closes
        (two windows after they died); the closing window confirms (or escalates) the verdict.
        """
        alerts = []
        for site, share in snapshot.family("silent_units").items():
            if not math.isfinite(share) or share < self.dead_share or site in self.episodes.open:
                continue
            evidence = {"silent_share": share, "provisional": True, "zero_fraction": snapshot.family("zero_fraction").get(site)}
            alerts += self._report(site, snapshot, facts, share, "warning", evidence,
                                   f"{share:.0%} of the units of `{site}` fired for none of at least the last half "
                                   f"window of samples (provisional: the full window confirms it)")
        return alerts

    def _silent_sites(self, snapshot: Snapshot, facts: ModelFacts) -> list[Alert]:
        alerts = []
        for site, zeros in snapshot.family("zero_fraction").items():
            if facts.activations.get(site, "relu") != "relu" or not math.isfinite(zeros):
                continue
            silent = consecutive(self.remember(f"silent:{site}", float(zeros >= 1.0)))
            if silent >= self.silent_checks:
                alerts += self._report(site, snapshot, facts, 1.0, "critical", {"silent_checks": silent, "zero_fraction": 1.0},
                                       f"every output of `{site}` was 0 in the last {silent} check intervals: "
                                       "no unit fired for any sampled input")
        return alerts

    def _report(self, site: str, snapshot: Snapshot, facts: ModelFacts, share: float, severity: str,
                evidence: dict, message: str) -> list[Alert]:
        evidence = {"dead_share": share, "layers": [site], **evidence}
        if self.memory.get("update_ratio") is not None:
            evidence["update_ratio"] = self.memory["update_ratio"]
        feeding = facts.feeding_layer(site)
        if feeding is not None and feeding in facts.bias_mean:
            evidence["feeding_layer"] = feeding
            evidence["preceding_bias_mean"] = facts.bias_mean[feeding]
        return self.episode(site, facts, step=snapshot.step, severity=severity, layer=site, value=share,
                            evidence=evidence, message=message)


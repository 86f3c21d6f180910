"""loss_divergence: the training loss climbs out of control, above where training started."""

from __future__ import annotations

from torchhealth.records import Alert
from torchhealth.detectors.base import LOSS, START_STEPS, Detector, ordered
from torchhealth.detectors.episodes import MODEL
from torchhealth.detectors.exploding_gradient import RECENT, SPIKE_CHECKS
from torchhealth.detectors.trends import median
from torchhealth.facts import ModelFacts
from torchhealth.formatting import fmt
from torchhealth.records import Snapshot

RISE = 2.0
"""Loss above this multiple of its starting level (and still rising) is divergence."""
CRITICAL_RISE = 10.0
SUDDEN_RISE = 1000.0
"""A single check this far above the start is divergence at once: no batch or episode gives a loss 1000x
its start (a mislabelled batch gave 11x, a long REINFORCE episode 44x in the benchmark), as the
gradient detector's sudden jump to 1000x its reference is an explosion at once."""


class LossDivergence(Detector):
    """Compares the loss with its starting level: the lowest loss of the checks in its first ``START_STEPS`` steps.

    The lowest early value, not their median: a loss that explodes within the first checks would
    otherwise raise its own reference (0.7, 8.5, 20 -> median 8.5), while a loss that starts high and
    falls (a healthy run) only lowers it, which cannot raise a false alarm on a run that keeps falling.
    Only checks of the first ``START_STEPS`` steps count: a loss that fell 50x by the third scheduled
    check is not where training started. Late-training bounces (0.01 -> 0.05) stay far below the
    starting level and are not divergence.

    Nothing is judged before the first ``START_STEPS`` steps have passed: the starting level is made of
    them (one step is no level: Adam's and Adadelta's first steps often overshoot and come back, and a
    loss summed over a variable number of terms, an episode, moves with the data). A warning needs the
    latest loss AND the median of the last 3 checks at ``RISE`` times the start, and still rising (the
    latest check above the one before and the last 3 checks' median above the 3 before), so one noisy
    interval is not a rise, nor a loss that settled at a higher level; critical from ``CRITICAL_RISE``
    times the start. A single check ``CRITICAL_RISE`` (but not ``SUDDEN_RISE``) times above the start
    without that trend is first an advisory ``loss_spike`` (one bad batch gives one, and so does one
    long episode of a loss summed over its steps), and divergence if the loss stays ``RISE`` times above
    the start for ``SPIKE_CHECKS`` checks. A loss that has gone below zero (a policy-gradient or other surrogate
    objective) has no level to diverge from and is not judged; one whose model has layers another
    optimizer trains (a GAN generator's loss rises as its discriminator learns) needs ``CRITICAL_RISE``
    times the start for the trend too.

    Args:
        rise: Loss / starting level that is divergence while rising (``RISE``, 2).
        critical_rise: Rise that is critical, and a single check's spike (``CRITICAL_RISE``, 10).
        sudden_rise: Rise that is divergence at once (``SUDDEN_RISE``, 1000).
        spike_checks: Checks a spike must stay ``rise`` above the start to be divergence (``SPIKE_CHECKS``, 3).
        recover_after: Healthy checks that close an episode (3).
    """

    kind = "loss_divergence"
    thresholds = {"rise": "positive", "critical_rise": "positive", "sudden_rise": "positive",
                  "spike_checks": "count"}

    def __init__(self, *, rise: float = RISE, critical_rise: float = CRITICAL_RISE, sudden_rise: float = SUDDEN_RISE,
                 spike_checks: int = SPIKE_CHECKS, recover_after: int = Detector.recover_after) -> None:
        super().__init__()
        self.configure(recover_after=recover_after, rise=rise, critical_rise=critical_rise, sudden_rise=sudden_rise,
                       spike_checks=spike_checks)
        ordered(type(self).__name__, ("rise", rise), ("critical_rise", critical_rise), ("sudden_rise", sudden_rise))

    def check(self, snapshot: Snapshot, facts: ModelFacts) -> list[Alert]:
        if snapshot.loss is None:
            return []
        losses = self.remember_loss(snapshot)
        first_step = self.memory[f"first_step:{LOSS}"]
        start = min(self.first(LOSS))
        self.memory["signed"] = self.memory.get("signed", False) or snapshot.loss < 0
        if len(losses) < 2 or start <= 0 or self.memory["signed"]:
            return []  # a loss that went below zero is a surrogate (policy gradient...): no "above the start"
        level = median(losses[-3:])
        rise = snapshot.loss / start
        # rising: the latest check above the one before, and the last 3 checks' median above the 3 before
        # (a loss that settled at a higher level, as a GAN generator's does while its discriminator learns,
        # is not climbing); with fewer checks, the latest check alone
        rising = snapshot.loss > losses[-2] and (len(losses) < 6 or level > median(losses[-6:-3]))
        settled = snapshot.step >= first_step + START_STEPS
        spike = self.memory.get("spike")
        if spike is not None:
            spike["checks"] += 1
        lasting = spike is not None and spike["checks"] >= self.spike_checks and rise >= self.rise
        # a loss another optimizer plays against (a GAN generator's, while the discriminator learns) rises by
        # design: only a rise ``critical_rise`` times the start is divergence there
        adversarial = bool(facts.trained_elsewhere)
        trend = settled and level >= (self.critical_rise if adversarial else self.rise) * start and rising
        if not settled:  # the starting level is the first START_STEPS steps: nothing rises above it before they pass
            return []
        if self.critical_rise <= rise < self.sudden_rise and not trend and not lasting:
            return self._spike(snapshot, facts, start, rise)
        if lasting or (rise >= self.rise and trend) or rise >= self.sudden_rise:
            severity = "critical" if rise >= self.critical_rise else "warning"
            evidence = {"loss": snapshot.loss, "recent_median": level, "start_loss": start, "rise": rise,
                        "best_loss": min(losses)}
            if spike is not None:
                evidence["spike_step"] = spike["step"]
            return self.episode(MODEL, facts, step=snapshot.step, severity=severity,
                layer=None, value=snapshot.loss, evidence=evidence,
                message=f"training loss {fmt(snapshot.loss, 4)} (recent median {fmt(level, 4)}) is {fmt(rise)}x its "
                        f"starting level {fmt(start, 4)} and rising")
        if rise < self.rise:
            self.memory.pop("spike", None)
            self.episodes.healthy(MODEL, snapshot.step)
        return []

    def _spike(self, snapshot: Snapshot, facts: ModelFacts, start: float, rise: float) -> list[Alert]:
        """One check far above the start without a rising trend: advisory, divergence if it lasts."""
        if self.memory.get("spike") is not None:
            return []
        self.memory["spike"] = {"step": snapshot.step, "checks": 1}
        recent = median(self.series[LOSS][-RECENT - 1:-1] or self.series[LOSS])
        evidence = {"loss": snapshot.loss, "start_loss": start, "recent_median": recent, "rise": rise,
                    "spike_step": snapshot.step}
        return [self.make_alert(facts, kind="loss_spike", layer=None, step=snapshot.step, severity="info",
                                value=snapshot.loss, evidence=evidence,
                                message=(f"training loss {fmt(snapshot.loss, 4)} in the steps up to {snapshot.step} is "
                                         f"{fmt(rise)}x its starting level {fmt(start, 4)} (recent median "
                                         f"{fmt(recent, 4)}); if it falls back within {self.spike_checks} checks it "
                                         f"was a batch, if it stays it diverges"))]

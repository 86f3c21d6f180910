"""nonfinite: NaN/Inf in the loss, a gradient or an activation, reported at its root cause."""

from __future__ import annotations

from torchhealth.records import Alert
from torchhealth.detectors.base import Detector
from torchhealth.detectors.episodes import MODEL
from torchhealth.facts import ModelFacts
from torchhealth.records import Snapshot

SOURCE_RANK = {"activation": 0, "loss": 1, "grad": 2}
"""At the same step the forward pass (activations) comes before the loss, and the loss before backward."""


class NonFinite(Detector):
    """One alert per non-finite episode, naming the root: the earliest step, then forward order.

    A NaN cascade (every later layer, the loss and every gradient) is one episode whose alert names
    the first activation that went non-finite. Non-finite gradients on checks where AMP's GradScaler
    skipped steps (and the forward pass and loss were finite) are normal loss-scaling, not a problem.

    Args:
        recover_after: Finite checks that close an episode (2).
    """

    kind = "nonfinite"
    recover_after = 2

    def __init__(self, *, recover_after: int = recover_after) -> None:
        super().__init__()
        self.configure(recover_after=recover_after)

    def check(self, snapshot: Snapshot, facts: ModelFacts) -> list[Alert]:
        sources = dict(snapshot.nonfinite)
        if snapshot.skipped_steps and all(s.startswith("grad:") for s in sources):
            sources = {}
        if not sources:
            self.episodes.healthy(MODEL, snapshot.step)
            return []
        root = self.root(sources, facts)
        layer = root.split(":", 1)[1] if ":" in root else None
        evidence = {"root": root, "first_step": sources[root], "sources": len(sources),
                    "cascade": sorted(sources, key=sources.get)[:10]}
        where = {"activation": f"the output of `{layer}`", "grad": f"the gradient of `{layer}`",
                 "loss": "the loss"}[root.split(":")[0]]
        return self.episode(MODEL, facts, step=snapshot.step, severity="critical", alert_step=sources[root],
                            layer=layer, value=sources[root], evidence=evidence,
                            message=(f"NaN/Inf first appeared in {where} at step {sources[root]}"
                                     + (f" ({len(sources) - 1} other sources followed)" if len(sources) > 1 else "")))

    @staticmethod
    def root(sources: dict[str, int], facts: ModelFacts) -> str:
        """The source that went non-finite first: earliest step, then activations in forward order."""
        first = min(sources.values())
        earliest = [s for s in sources if sources[s] == first]
        layers = facts.in_forward_order([s.split(":", 1)[1] for s in earliest if ":" in s])
        position = {layer: i for i, layer in enumerate(layers)}
        return min(earliest, key=lambda s: (SOURCE_RANK[s.split(":")[0]], position.get(s.split(":", 1)[-1], 0)))

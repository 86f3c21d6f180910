"""The detector interface: pure functions of snapshot history, no hooks and no I/O."""

from __future__ import annotations

from typing import Any

from torch import nn

from torchhealth.detectors.alert import Alert
from torchhealth.facts import ModelFacts
from torchhealth.snapshot import Snapshot


class Detector:
    """Base class of one problem kind's detector."""

    kind = "detector"

    def check(self, snapshot: Snapshot, facts: ModelFacts) -> list[Alert]:
        """Returns the alerts this snapshot raises, given the history seen so far."""
        return []

    def static_check(self, model: nn.Module, facts: ModelFacts) -> list[Alert]:
        """Returns alerts that need no training (run once when the monitor attaches)."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """History needed to resume detection after a checkpoint."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what ``state_dict`` returned."""

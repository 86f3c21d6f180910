"""The detector interface: pure functions of snapshot history, no hooks and no I/O."""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from torchhealth.advice import suggest
from torchhealth.records import Alert
from torchhealth.detectors.episodes import Episodes
from torchhealth.facts import ModelFacts
from torchhealth.records import Snapshot

SERIES_LIMIT = 200
"""Checks of history a detector keeps per series (older values are dropped)."""
START_VALUES = 3
"""First values of each series kept for good: a run's start must not drift once old checks are dropped."""
START_STEPS = 10
"""Steps from a series' first value within which its start values are taken (the default check interval,
its end included: the check there averages the steps since the first one, so the start is never one
step): the level training started from, however many checks the loss trip-wire added in them, never a
level reached by learning at later checks (a loss or norm that fell 50x by the third scheduled check)."""


class Detector:
    """Base class of one problem kind's detector.

    Subclasses keep their history in ``self.series`` (``{name: [float, ...]}``) and ``self.memory``
    (plain values), and raise alerts through ``self.episodes`` so that one (kind, layer) episode
    alerts once; ``state_dict`` then covers everything needed to resume.
    """

    kind = "detector"
    recover_after = 3

    def __init__(self) -> None:
        self.episodes = Episodes(self.recover_after)
        self.series: dict[str, list[float]] = {}
        self.memory: dict[str, Any] = {}

    def check(self, snapshot: Snapshot, facts: ModelFacts) -> list[Alert]:
        """Returns the alerts this snapshot raises, given the history seen so far."""
        return []

    def static_check(self, model: nn.Module, facts: ModelFacts) -> list[Alert]:
        """Returns alerts that need no training (run once when the monitor attaches)."""
        return []

    # -- helpers for subclasses --------------------------------------------------------------------
    def remember(self, name: str, value: float, step: int | None = None) -> list[float]:
        """Appends ``value`` to series ``name`` (bounded) and returns the series.

        With ``step``, only values of the first ``START_STEPS`` steps of the series are start values.
        """
        series = self.series.setdefault(name, [])
        series.append(float(value))
        if len(series) > SERIES_LIMIT:
            del series[:-SERIES_LIMIT]
        start = self.memory.setdefault(f"start:{name}", [])
        if step is None:
            early = len(series) <= START_VALUES
        else:
            early = step <= self.memory.setdefault(f"first_step:{name}", step) + START_STEPS
        if early and len(start) < START_VALUES:
            start.append(float(value))  # the series' first values, kept for good
        return series

    def first(self, name: str, n: int = START_VALUES) -> list[float]:
        """The first ``n`` (at most ``START_VALUES``) start values of series ``name`` (see ``remember``)."""
        start = self.memory.get(f"start:{name}") or self.series.get(name, [])[:START_VALUES]
        return start[:n]

    def make_alert(self, facts: ModelFacts, *, layer: str | None, step: int, severity: str, value: float,
                   message: str, evidence: dict[str, Any] | None = None) -> Alert:
        """An alert of this detector's kind, with ranked suggestions from ``advice``."""
        evidence = dict(evidence or {})
        return Alert(kind=self.kind, layer=layer, step=step, severity=severity, value=float(value), message=message,
                     suggestions=self.advise(facts, evidence), evidence=evidence)

    def advise(self, facts: ModelFacts, evidence: dict[str, Any]) -> list[str]:
        """Ranked fixes for this detector's alert (``advice.suggest`` by kind); a detector of your own
        overrides it to give its own."""
        return suggest(self.kind, facts, evidence)

    def episode(self, key: str, facts: ModelFacts, *, step: int, severity: str, **alert: Any) -> list[Alert]:
        """Reports the problem for episode ``key``; returns ``[alert]`` when one is due, else ``[]``."""
        made = self.episodes.report(key, step, severity, lambda: self.make_alert(
            facts, step=step, severity=severity, **alert))
        return [made] if made else []

    # -- checkpointing -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """History needed to resume detection after a checkpoint (plain dicts, lists and numbers)."""
        return {"episodes": self.episodes.state_dict(), "series": copy.deepcopy(self.series),
                "memory": copy.deepcopy(self.memory)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what ``state_dict`` returned."""
        self.episodes.load_state_dict(state.get("episodes", {}))
        self.series = copy.deepcopy(state.get("series", {}))
        self.memory = copy.deepcopy(state.get("memory", {}))

"""The detector interface: pure functions of snapshot history, no hooks and no I/O."""

from __future__ import annotations

import copy
import inspect
import math
import numbers
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
LOSS = "loss"
"""The series every detector that reads the training loss keeps it in (``Detector.remember_loss``)."""
THRESHOLD_KINDS = {
    "count": ("a whole number of checks, 1 or more", lambda v: isinstance(v, numbers.Integral) and v >= 1),
    "share": ("a share above 0 and at most 1", lambda v: 0 < v <= 1),
    "ratio": ("a ratio above 0 and below 1", lambda v: 0 < v < 1),
    "positive": ("a finite number above 0", lambda v: 0 < v < math.inf),
}
"""What each kind of threshold argument accepts (a description for the error, and the test)."""


def threshold(owner: str, name: str, value: Any, kind: str, default: Any) -> Any:
    """Returns ``value`` when it is a valid ``kind`` of threshold; raises ValueError naming it otherwise.

    Args:
        owner: The detector class's name, for the message.
        name: The constructor argument.
        value: What was passed.
        kind: A key of ``THRESHOLD_KINDS``.
        default: The argument's default, suggested as the fix.
    """
    what, valid = THRESHOLD_KINDS[kind]
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not valid(value):
        raise ValueError(f"{owner}: argument {name!r} must be {what}, got {value!r}; "
                         f"pass e.g. {name}={default!r} (the default)")
    return value


def ordered(owner: str, *pairs: tuple[str, float]) -> None:
    """Raises ValueError unless the named thresholds do not decrease in the order given
    (a recovery level at most the warning level, the warning level at most the critical one)."""
    for (low_name, low), (high_name, high) in zip(pairs, pairs[1:]):
        if low > high:
            raise ValueError(f"{owner}: argument {low_name!r} ({low!r}) must not exceed {high_name!r} ({high!r}); "
                             f"lower {low_name} or raise {high_name}")


class Detector:
    """Base class of one problem kind's detector.

    Subclasses keep their history in ``self.series`` (``{name: [float, ...]}``) and ``self.memory``
    (plain values), and raise alerts through ``self.episodes`` so that one (kind, layer) episode
    alerts once; ``state_dict`` then covers everything needed to resume.
    """

    kind = "detector"
    recover_after = 3
    """Consecutive healthy checks that close an open episode (a constructor argument of the shipped detectors
    that have episodes)."""

    thresholds: dict[str, str] = {}
    """The threshold arguments of the constructor, each with its kind (a key of ``THRESHOLD_KINDS``)."""

    def __init__(self, *, recover_after: int | None = None) -> None:
        """``recover_after`` (None: the class's) is validated like every threshold (see ``configure``)."""
        self.episodes = Episodes(self.recover_after)
        self.series: dict[str, list[float]] = {}
        self.memory: dict[str, Any] = {}
        if recover_after is not None:
            self.configure(recover_after=recover_after)

    def configure(self, **values: Any) -> None:
        """Validates threshold arguments (named in ``thresholds``) and keeps them on the instance; a bad value
        raises ValueError naming the argument, the value and the default."""
        parameters = inspect.signature(type(self)).parameters
        for name, value in values.items():
            kind = "count" if name == "recover_after" else self.thresholds[name]
            default = parameters[name].default if name in parameters else getattr(type(self), name)
            setattr(self, name, threshold(type(self).__name__, name, value, kind, default))
        self.episodes.recover_after = self.recover_after

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

    def remember_loss(self, snapshot: Snapshot) -> list[float]:
        """Remembers the snapshot's training loss in series ``LOSS`` and returns that series.

        The one loss history of every detector that reads the loss (each keeps its own copy in its
        ``series``, so that a detector's ``state_dict`` alone resumes it and no detector depends on
        another's instance). Two kinds of start values are kept: ``first(LOSS)``, the values of the
        first ``START_STEPS`` steps (the level training started from), and ``first_checks(LOSS)``, the
        first ``START_VALUES`` values whatever their steps.
        """
        series = self.remember(LOSS, snapshot.loss, snapshot.step)
        first = self.memory.setdefault(f"first:{LOSS}", [])
        if len(series) <= START_VALUES and len(first) < START_VALUES:
            first.append(float(snapshot.loss))
        return series

    def first_checks(self, name: str) -> list[float]:
        """The first ``START_VALUES`` values of series ``name`` whatever their steps (see ``remember_loss``)."""
        return self.memory.get(f"first:{name}") or self.series.get(name, [])[:START_VALUES]

    def first(self, name: str, n: int = START_VALUES) -> list[float]:
        """The first ``n`` (at most ``START_VALUES``) start values of series ``name`` (see ``remember``)."""
        start = self.memory.get(f"start:{name}") or self.series.get(name, [])[:START_VALUES]
        return start[:n]

    def make_alert(self, facts: ModelFacts, *, layer: str | None, step: int, severity: str, value: float,
                   message: str, evidence: dict[str, Any] | None = None, kind: str | None = None) -> Alert:
        """An alert of this detector's kind (or of ``kind``: an advisory, a static finding), with ranked
        suggestions from ``advise`` (from ``advice.suggest`` for another kind)."""
        evidence = dict(evidence or {})
        kind = kind or self.kind
        fixes = self.advise(facts, evidence) if kind == self.kind else suggest(kind, facts, evidence)
        return Alert(kind=kind, layer=layer, step=step, severity=severity, value=float(value), message=message,
                     suggestions=fixes, evidence=evidence)

    def advise(self, facts: ModelFacts, evidence: dict[str, Any]) -> list[str]:
        """Ranked fixes for this detector's alert (``advice.suggest`` by kind); a detector of your own
        overrides it to give its own."""
        return suggest(self.kind, facts, evidence)

    def episode(self, key: str, facts: ModelFacts, *, step: int, severity: str, alert_step: int | None = None,
                **alert: Any) -> list[Alert]:
        """Reports the problem for episode ``key`` at check ``step``; returns ``[alert]`` when one is due, else
        ``[]``. The alert carries ``alert_step`` where the problem started before the check (else ``step``)."""
        made = self.episodes.report(key, step, severity, lambda: self.make_alert(
            facts, step=step if alert_step is None else alert_step, severity=severity, **alert))
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

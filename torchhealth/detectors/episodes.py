"""Episodes: one alert per (kind, layer) problem episode, shared by every detector.

A detector says, at every check, whether each layer currently shows its problem (and how badly).
``Episodes`` turns that into alerts: the first bad check of an episode alerts, a worse severity
alerts again (escalation), a layer that stays healthy for ``recover_after`` checks closes its
episode (the recovery is recorded in ``history``), and a later relapse opens a new episode.
"""

from __future__ import annotations

from typing import Any, Callable

from torchhealth.records import SEVERITIES, Alert

MODEL = "<model>"
"""Episode key for model-wide problems (alerts carry ``layer=None`` or a culprit layer)."""

HISTORY_LIMIT = 50


class Episodes:
    """Open episodes per layer for one detector; state is plain dicts, lists and numbers.

    Args:
        recover_after: Consecutive healthy checks that close an open episode.
    """

    def __init__(self, recover_after: int = 3) -> None:
        self.recover_after = recover_after
        self.open: dict[str, dict[str, Any]] = {}
        self.history: list[dict[str, Any]] = []

    def report(self, key: str, step: int, severity: str, make_alert: Callable[[], Alert]) -> Alert | None:
        """Notes that ``key`` shows the problem at ``step``; returns an alert when one is due.

        ``make_alert`` is only called when an alert is due (new episode, relapse or escalation).
        """
        episode = self.open.get(key)
        if episode is None:
            relapse = sum(1 for e in self.history if e["key"] == key)
            self.open[key] = {"since": step, "severity": severity, "healthy": 0, "relapse": relapse}
            alert = make_alert()
            if relapse:
                alert.evidence["relapse"] = relapse
                alert.message += f" (relapse: episode {relapse + 1} of this problem here)"
            return alert
        episode["healthy"] = 0
        if SEVERITIES.index(severity) > SEVERITIES.index(episode["severity"]):
            episode["severity"] = severity
            alert = make_alert()
            alert.evidence["escalated_from"] = "warning"
            alert.evidence["episode_since"] = episode["since"]
            return alert
        return None

    def healthy(self, key: str, step: int) -> None:
        """Notes that ``key`` looks healthy at ``step``; closes its episode after enough such checks."""
        episode = self.open.get(key)
        if episode is None:
            return
        episode["healthy"] += 1
        if episode["healthy"] >= self.recover_after:
            del self.open[key]
            self.history.append({"key": key, "since": episode["since"], "recovered": step,
                                 "severity": episode["severity"]})
            del self.history[:-HISTORY_LIMIT]

    def is_open(self, key: str) -> bool:
        """True while ``key`` has an unrecovered episode."""
        return key in self.open

    def state_dict(self) -> dict[str, Any]:
        """Plain-data state for checkpoints."""
        return {"open": {k: dict(v) for k, v in self.open.items()}, "history": [dict(e) for e in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what ``state_dict`` returned."""
        self.open = {k: dict(v) for k, v in state.get("open", {}).items()}
        self.history = [dict(e) for e in state.get("history", [])]

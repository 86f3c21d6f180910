"""Diagnosis: a run's alerts as root causes with their consequences linked, and fixes that agree.

Detectors judge one symptom each; one fault often shows several (NaN weights read as dead units; dead
units starve the layers below them of gradient; both stall the loss). ``Diagnosis`` runs after the
detectors at every check and, knowing the alerts raised before, links each new alert to an earlier
alert that explains it (``Alert.caused_by``), groups one cause's per-layer alerts into one alert that
lists the layers, and keeps the run's fixes consistent: a knob one alert turns one way (the learning
rate lowered from 0.05) is never turned the other way by a later alert. ``summarize`` reads a run's
alerts back (live or from ``alerts.jsonl``) as the diagnosis ``torchhealth report`` ends with.
"""

from __future__ import annotations

import copy
from typing import Any, Iterable, Sequence

from torchhealth.advice import Fix, suggest
from torchhealth.records import Alert, describe
from torchhealth.facts import ModelFacts
from torchhealth.records import Snapshot

EXPLAINS: dict[str, tuple[str, ...]] = {
    # non-finite weights and activations read as zeros, no gradient, saturation and a stuck loss
    "nonfinite": ("dead_units", "vanishing_gradient", "saturated_activation", "loss_plateau", "loss_divergence"),
    # steps that overshoot: the loss climbs, values overflow, ReLU pre-activations are pushed negative
    # (a spike advisory beside an explosion is the explosion's own, not a batch)
    "exploding_gradient": ("loss_divergence", "nonfinite", "dead_units", "saturated_activation", "loss_plateau",
                           "loss_spike", "gradient_spike"),
    "loss_divergence": ("exploding_gradient", "nonfinite", "dead_units", "saturated_activation", "loss_plateau",
                        "loss_spike", "gradient_spike"),
    # a dead or saturated layer passes (almost) no gradient to the layers below it
    "dead_units": ("vanishing_gradient", "loss_plateau"),
    "saturated_activation": ("vanishing_gradient", "loss_plateau"),
    "vanishing_gradient": ("loss_plateau",),
}
"""Which later alert kinds an earlier alert of each kind explains."""
ORDER = ("exploding_gradient", "nonfinite", "loss_divergence", "saturated_activation", "dead_units",
         "vanishing_gradient", "loss_plateau", "gradient_spike", "loss_spike")
"""Causal order within one check: a cause is linked before the symptoms it explains."""
HORIZON_CHECKS = 10
"""Checks after its episode closed during which an alert still explains new ones: the longest window a
consequence's detector judges over (``loss_plateau`` compares 10 checks)."""
BELOW = ("vanishing_gradient",)
"""Kinds explained by a per-layer cause only when the cause sits above the layers they name."""
RECORD_LIMIT = 200


class Diagnosis:
    """Links, groups and reconciles the alerts of one run, check by check.

    State is plain dicts and lists (``state_dict``), so a resumed run links to alerts raised before
    its checkpoint.
    """

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []  # earlier alerts: ref, caused_by, layers, top fix
        self.decided: dict[str, dict[str, Any]] = {}  # knob -> {"direction", "by"}
        self.last_open: dict[str, int] = {}  # kind -> last check step its detector had an open episode
        self.checks: list[int] = []  # the last HORIZON_CHECKS check steps

    def link(self, alerts: list[Alert], snapshot: Snapshot, facts: ModelFacts, detectors: Iterable[Any] = ()) -> list[Alert]:
        """Returns this check's alerts linked to their causes, grouped, with consistent fixes.

        Args:
            alerts: What the detectors raised at this check.
            snapshot: The check's snapshot.
            facts: The model facts (forward order, optimizer) the advice uses.
            detectors: The run's detectors; their open episodes say which earlier alerts still hold.
        """
        self.checks = (self.checks + [snapshot.step])[-HORIZON_CHECKS:]
        for detector in detectors:  # a detector of the user's own may keep no episodes
            episodes = getattr(detector, "episodes", None)
            if episodes is not None and episodes.open:
                self.last_open[detector.kind] = snapshot.step
        rank = {kind: i for i, kind in enumerate(ORDER)}
        # stable: the shipped kinds in causal order, then kinds of the user's own detectors, in detector order
        ordered = sorted(alerts, key=lambda a: rank.get(a.kind, len(ORDER)))
        linked = []
        for alert in ordered:
            earlier = self._episode_start(alert)
            cause = self._cause(alert, facts) if earlier is None else earlier.get("caused_by")
            if cause is not None:
                alert.caused_by = {k: cause[k] for k in ("kind", "layer", "step")}
            linked.append(alert)
            self._record(alert, snapshot.step)  # same-check alerts explain later ones in causal order
        out = _group(linked, facts)
        for alert in out:  # in causal order: a root's fixes are settled before its consequences point to them
            self._reconcile(alert)
            record = self._find(alert.ref)
            if record is not None:
                record["fix"] = next((str(s) for s in alert.suggestions), None)
                record["layers"] = list(alert.evidence.get("layers") or ([alert.layer] if alert.layer else []))
        return out

    # -- links -------------------------------------------------------------------------------------
    def _cause(self, alert: Alert, facts: ModelFacts) -> dict[str, Any] | None:
        """The earliest still-relevant earlier alert that explains ``alert`` (a root where one does)."""
        candidates = [r for r in self.records if alert.kind in EXPLAINS.get(r["kind"], ())
                      and r.get("severity") != "info"  # advisories (spikes) explain nothing
                      and self._holds(r) and self._above(r, alert, facts)]
        if alert.kind == "nonfinite":  # a loss that climbed and then overflowed; not one that overflowed at once
            candidates = [r for r in candidates if r["kind"] == "exploding_gradient" or r["step"] < alert.step]
        if not candidates:
            return None
        roots = [r for r in candidates if r["caused_by"] is None]
        return min(roots or candidates, key=lambda r: r["step"])

    def _episode_start(self, alert: Alert) -> dict[str, Any] | None:
        """For an escalation (the same episode got worse), the record of the episode's first alert."""
        if "escalated_from" not in alert.evidence:
            return None
        same = [r for r in reversed(self.records) if r["kind"] == alert.kind]  # model-wide episodes name a culprit layer
        return next((r for r in same if r["layer"] == alert.layer), same[0] if same else None)

    def _holds(self, record: dict[str, Any]) -> bool:
        """True while the alert's episode is open, or closed less than ``HORIZON_CHECKS`` checks ago."""
        last = max(self.last_open.get(record["kind"], record["check"]), record["check"])
        return last >= self.checks[0]

    @staticmethod
    def _above(cause: dict[str, Any], alert: Alert, facts: ModelFacts) -> bool:
        """For gradient starvation: a cause layer runs after (above) the lowest layer the alert names."""
        if alert.kind not in BELOW or cause["kind"] not in ("dead_units", "saturated_activation"):
            return True
        lower = alert.evidence.get("lower_layers") or ([alert.layer] if alert.layer else [])
        position = {name: i for i, name in enumerate(facts.forward_order)}
        lowest = min((position[n] for n in lower if n in position), default=None)
        sites = [position[s] for s in cause.get("layers", []) if s in position]
        return lowest is None or not sites or max(sites) > lowest

    def _record(self, alert: Alert, check: int) -> None:
        self.records.append({**alert.ref, "check": check, "severity": alert.severity, "caused_by": alert.caused_by,
                             "fix": None,
                             "layers": list(alert.evidence.get("layers") or ([alert.layer] if alert.layer else []))})
        del self.records[:-RECORD_LIMIT]

    def _find(self, ref: dict[str, Any]) -> dict[str, Any] | None:
        return next((r for r in reversed(self.records) if all(r[k] == ref[k] for k in ("kind", "layer", "step"))), None)

    def _root(self, ref: dict[str, Any]) -> dict[str, Any]:
        """Follows ``caused_by`` up to the alert that has no cause."""
        record = self._find(ref) or ref
        seen = 0
        while record.get("caused_by") and seen < RECORD_LIMIT:
            record, seen = self._find(record["caused_by"]) or record["caused_by"], seen + 1
        return record

    # -- fixes -------------------------------------------------------------------------------------
    def _reconcile(self, alert: Alert) -> None:
        """Puts the root's fix first on a consequence and drops fixes that contradict earlier ones."""
        fixes: list[str] = []
        if alert.caused_by:
            root = self._root(alert.caused_by)
            lead = f"Fix the root cause first, {describe(root, '`')}"
            fixes.append(Fix(f"{lead}: {root['fix']}" if root.get("fix") else f"{lead}: this follows from it."))
            if root.get("kind") == "nonfinite":  # the symptom is an artefact of NaN/Inf values: no fix of its own
                alert.suggestions = fixes
                return
        withheld = []
        for fix in alert.suggestions:
            knob, direction = getattr(fix, "knob", None), getattr(fix, "direction", None)
            earlier = self.decided.get(knob) if knob else None
            if earlier is not None and earlier["direction"] != direction:
                withheld.append({"fix": str(fix), "contradicts": earlier["by"]})
                continue
            if knob and earlier is None:
                self.decided[knob] = {"direction": direction, "by": alert.ref, "text": str(fix)}
            elif earlier is not None:  # the same change: one target value across the run (0.05 -> 0.01, never also 0.005)
                fix = Fix(earlier["text"], knob, direction)
            if fix not in fixes and not any(fix in f for f in fixes[:1] if alert.caused_by):
                fixes.append(fix)
        if withheld:
            alert.evidence["withheld_fixes"] = withheld
        alert.suggestions = fixes

    # -- checkpointing -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The linking state a resumed run needs (plain values)."""
        return copy.deepcopy({"records": self.records, "decided": self.decided, "last_open": self.last_open,
                              "checks": self.checks})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what ``state_dict`` returned."""
        state = copy.deepcopy(state or {})
        self.records = state.get("records", [])
        self.decided = state.get("decided", {})
        self.last_open = state.get("last_open", {})
        self.checks = state.get("checks", [])


def _group(alerts: list[Alert], facts: ModelFacts) -> list[Alert]:
    """Merges one check's per-layer alerts of one kind, severity and cause into one alert listing the layers."""
    groups: dict[tuple, list[Alert]] = {}
    for alert in alerts:
        cause = tuple(sorted((alert.caused_by or {}).items()))
        groups.setdefault((alert.kind, alert.severity, cause), []).append(alert)
    out = []
    for alert in alerts:
        cause = tuple(sorted((alert.caused_by or {}).items()))
        members = groups.pop((alert.kind, alert.severity, cause), None)
        if members is None:
            continue
        if len(members) == 1 or any(m.layer is None for m in members):
            out += members
            continue
        layers = facts.in_forward_order(list(dict.fromkeys(l for m in members for l in m.evidence.get("layers") or [m.layer])))
        first = next(m for m in members if m.layer == layers[0]) if any(m.layer == layers[0] for m in members) else members[0]
        evidence = {**first.evidence, "layers": layers,
                    "grouped": [{"layer": m.layer, "value": m.value, "message": m.message} for m in members]}
        others = ", ".join(f"`{layer}`" for layer in layers if layer != first.layer)
        # the catalogue's fixes for the whole group; a kind it does not know (a detector of the user's own) keeps its own
        fixes = (suggest(first.kind, facts, evidence) or list(first.suggestions)) if first.suggestions else []
        out.append(Alert(kind=first.kind, layer=first.layer, step=min(m.step for m in members), severity=first.severity,
                         value=max(m.value for m in members), evidence=evidence, caused_by=first.caused_by,
                         message=f"{len(layers)} layers: {first.message}; the same in {others}", suggestions=fixes))
    return out


def root_of(alert: Alert, earlier: Sequence[Alert]) -> Alert:
    """The root cause ``alert`` follows from, found among ``earlier`` alerts (``alert`` itself for a root)."""
    by_ref = {tuple(a.ref.values()): a for a in earlier}
    seen = 0
    while alert.caused_by and seen < RECORD_LIMIT:
        cause = by_ref.get((alert.caused_by.get("kind"), alert.caused_by.get("layer"), alert.caused_by.get("step")))
        if cause is None:
            break
        alert, seen = cause, seen + 1
    return alert


def summarize(alerts: Sequence[Alert | dict[str, Any]]) -> dict[str, Any]:
    """A run's diagnosis from its alerts (``Alert`` objects or their ``to_dict()`` form, oldest first).

    Returns:
        ``{"roots": [{"alert": dict, "consequences": [dict, ...]}, ...], "fixes": [str, ...],
        "advisories": [dict, ...]}``: root causes, critical first, then by step, each with the alerts
        that follow from it (in order); the run's fixes ranked (each root's own, first root first,
        without repeats); and the advisory (``info``) alerts, such as spikes that may be one batch.
    """
    records = [a.to_dict() if isinstance(a, Alert) else dict(a) for a in alerts]
    advisories = [r for r in records if r.get("severity") == "info" and not r.get("caused_by")]
    records = [r for r in records if r.get("severity") != "info" or r.get("caused_by")]
    key = lambda r: (r.get("kind"), r.get("layer"), r.get("step"))  # noqa: E731
    by_key = {key(r): r for r in records}

    def root_of(record: dict[str, Any]) -> dict[str, Any]:
        seen = set()
        while record.get("caused_by") and key(record) not in seen:
            seen.add(key(record))
            cause = record["caused_by"]
            record = by_key.get((cause.get("kind"), cause.get("layer"), cause.get("step")), record)
        return record

    roots: dict[tuple, dict[str, Any]] = {}
    for record in records:
        root = root_of(record)
        evidence = record.get("evidence") or {}
        if root is record and (evidence.get("relapse") or evidence.get("escalated_from")):  # the same problem again
            same = [e["alert"] for e in roots.values() if e["alert"].get("kind") == record.get("kind")]
            root = next((a for a in same if a.get("layer") == record.get("layer")),
                        same[-1] if same and evidence.get("escalated_from") else record)
        entry = roots.setdefault(key(root), {"alert": root, "consequences": []})
        if record is not root:
            entry["consequences"].append(record)
    ranked = sorted(roots.values(), key=lambda e: (e["alert"].get("severity") != "critical", e["alert"].get("step") or 0))
    fixes: list[str] = []
    for entry in ranked:
        for fix in entry["alert"].get("suggestions") or []:
            if fix not in fixes and not fix.startswith("Fix the root cause first"):
                fixes.append(fix)
    return {"roots": ranked, "fixes": fixes, "advisories": advisories}


def render(diagnosis: dict[str, Any], max_fixes: int = 5) -> list[str]:
    """``summarize``'s result as plain text lines: roots with their chains, then the ranked fixes."""
    advisories = [f"  - {describe(a, '`')}: {a.get('message')}" for a in diagnosis.get("advisories", [])]
    if advisories:
        advisories.insert(0, "Advisories (no problem on their own):")
    if not diagnosis["roots"]:
        return ["Diagnosis: no problem found."] + advisories
    lines = [f"Diagnosis: {len(diagnosis['roots'])} root cause{'s' if len(diagnosis['roots']) > 1 else ''}"]
    for i, entry in enumerate(diagnosis["roots"], 1):
        root = entry["alert"]
        lines.append(f"  {i}. {str(root.get('severity')).upper()} {describe(root, '`')}: {root.get('message')}")
        for consequence in entry["consequences"]:
            evidence = consequence.get("evidence") or {}
            same = consequence.get("kind") == root.get("kind") and not consequence.get("caused_by")
            word = "worse" if same and evidence.get("escalated_from") else "again" if same else "then"
            lines.append(f"     ↳ {word} {describe(consequence, '`')}: {consequence.get('message')}")
    if diagnosis["fixes"]:
        lines.append("Fixes, most promising first:")
        lines += [f"  {i}. {fix}" for i, fix in enumerate(diagnosis["fixes"][:max_fixes], 1)]
    return lines + advisories

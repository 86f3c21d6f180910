"""The records that flow between stages: ``Snapshot`` (collectors -> detectors and sinks) and ``Alert``
(detectors -> advice -> sinks). Every stage reads them; none of them owns them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

TOTAL = "total"
"""Key used in per-layer families for the whole-model value (e.g. total gradient norm)."""


@dataclass
class Snapshot:
    """All statistics read from the device at one check step.

    Attributes:
        step: The step this snapshot was taken at.
        stats: ``{family: {layer: value}}``; families are ``grad_norm``, ``param_grad_norm``,
            ``weight_norm``, ``update_ratio``, ``zero_fraction``, ``dead_units``, ``silent_units``
            (share of a ReLU site's units silent for the last half window), ``saturation``.
            A family or layer is absent when nothing was measured for it since the last snapshot.
        loss: Mean training loss over the steps since the last snapshot, or None.
        val_loss: Latest validation loss reported since the last snapshot, or None.
        nonfinite: ``{source: first_step}`` for every source that produced NaN/Inf since the last
            snapshot. Sources are ``"loss"``, ``"grad:<layer>"`` and ``"activation:<layer>"``.
        skipped_steps: Optimizer steps that AMP's GradScaler skipped since the last snapshot.
        window_samples: Samples behind the ``dead_units`` values (present only when a window closed).
        held: ``{family: {layer: value}}``: each layer's latest closed window's value of windowed
            families (``dead_units``). Sinks show them where ``stats`` has no value (``shown``), so
            that a chart has a value at every log step once the statistic exists; detectors read
            ``stats`` only, which holds a window's value at the check where it closed.
    """

    step: int
    stats: dict[str, dict[str, float]] = field(default_factory=dict)
    loss: float | None = None
    val_loss: float | None = None
    nonfinite: dict[str, int] = field(default_factory=dict)
    skipped_steps: int = 0
    window_samples: int = 0
    held: dict[str, dict[str, float]] = field(default_factory=dict)

    def family(self, name: str) -> dict[str, float]:
        """Returns one statistic family (empty dict when absent)."""
        return self.stats.get(name, {})

    def shown(self) -> dict[str, dict[str, float]]:
        """What a sink shows: ``stats``, plus ``held`` values for layers that ``stats`` lacks."""
        if not self.held:
            return self.stats
        shown = {family: dict(layers) for family, layers in self.stats.items()}
        for family, layers in self.held.items():
            shown[family] = {**layers, **shown.get(family, {})}
        return shown


SEVERITIES = ("info", "warning", "critical")
"""``info`` is advisory (a spike that may be one bad batch): it never pages and is no false alarm."""


@dataclass
class Alert:
    """One training-health finding.

    Attributes:
        kind: Problem kind, e.g. ``"exploding_gradient"``.
        layer: Qualified module name the problem is located in, or None for model-wide problems.
        step: Training step (0-based count of ``Monitor.step`` calls) the alert was raised at.
        severity: ``"info"`` (advisory), ``"warning"`` or ``"critical"``.
        value: The statistic that triggered the alert.
        message: One-line human-readable explanation with the evidence.
        suggestions: Ranked fixes, most promising first, each with its reason.
        evidence: Extra numbers behind the decision (for programs and the JSON log).
        caused_by: None for a root cause; for a consequence of an earlier alert, a reference to that
            alert: ``{"kind": ..., "layer": ..., "step": ...}``. Consequences never raise on their own.
    """

    kind: str
    layer: str | None
    step: int
    severity: str
    value: float
    message: str
    suggestions: list[str] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)
    caused_by: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"Alert.severity must be one of {SEVERITIES}, got {self.severity!r}")

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-serialisable dict (non-finite floats become strings)."""
        return _json_safe(dataclasses.asdict(self))

    @property
    def ref(self) -> dict[str, Any]:
        """What a consequence's ``caused_by`` holds to name this alert."""
        return {"kind": self.kind, "layer": self.layer, "step": self.step}

    def to_markdown(self) -> str:
        """Renders the alert as markdown for TensorBoard's text tab (a consequence under its root)."""
        where = f" in `{self.layer}`" if self.layer else ""
        cause = f" ↳ consequence of {describe(self.caused_by, '`')}," if self.caused_by else ""
        lines = [f"**{self.severity.upper()}**{cause} `{self.kind}`{where} at step {self.step}: {self.message}"]
        lines += [f"{i}. {s}" for i, s in enumerate(self.suggestions, 1)]
        return "\n\n".join(lines[:1]) + ("\n\n" + "\n".join(lines[1:]) if len(lines) > 1 else "")

    def __str__(self) -> str:
        where = f" [{self.layer}]" if self.layer else ""
        cause = f" (consequence of {describe(self.caused_by)})" if self.caused_by else ""
        text = f"{self.severity.upper()} {self.kind}{where} at step {self.step}{cause}: {self.message}"
        return text + "".join(f"\n  -> {s}" for s in self.suggestions)


def describe(ref: dict[str, Any] | None, quote: str = "") -> str:
    """Names the alert ``ref`` points to (an ``Alert.ref`` / ``caused_by`` value) in a few words."""
    if not ref:
        return "nothing"
    where = f" in {quote}{ref['layer']}{quote}" if ref.get("layer") else ""
    return f"{ref.get('kind')}{where} at step {ref.get('step')}"


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, str):
        return str(value)  # plain str: a suggestion's Fix subclass must not reach pickles or weights_only loads
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return str(value)

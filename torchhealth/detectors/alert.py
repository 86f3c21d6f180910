"""The Alert record: what every detector produces and every alert sink consumes."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

SEVERITIES = ("warning", "critical")


@dataclass
class Alert:
    """One training-health finding.

    Attributes:
        kind: Problem kind, e.g. ``"exploding_gradient"``.
        layer: Qualified module name the problem is located in, or None for model-wide problems.
        step: Training step (0-based count of ``Monitor.step`` calls) the alert was raised at.
        severity: ``"warning"`` or ``"critical"``.
        value: The statistic that triggered the alert.
        message: One-line human-readable explanation with the evidence.
        suggestions: Ranked fixes, most promising first, each with its reason.
        evidence: Extra numbers behind the decision (for programs and the JSON log).
    """

    kind: str
    layer: str | None
    step: int
    severity: str
    value: float
    message: str
    suggestions: list[str] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"Alert.severity must be one of {SEVERITIES}, got {self.severity!r}")

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-serialisable dict (non-finite floats become strings)."""
        return _json_safe(dataclasses.asdict(self))

    def to_markdown(self) -> str:
        """Renders the alert as markdown for TensorBoard's text tab."""
        where = f" in `{self.layer}`" if self.layer else ""
        lines = [f"**{self.severity.upper()}** `{self.kind}`{where} at step {self.step}: {self.message}"]
        lines += [f"{i}. {s}" for i, s in enumerate(self.suggestions, 1)]
        return "\n\n".join(lines[:1]) + ("\n\n" + "\n".join(lines[1:]) if len(lines) > 1 else "")

    def __str__(self) -> str:
        where = f" [{self.layer}]" if self.layer else ""
        text = f"{self.severity.upper()} {self.kind}{where} at step {self.step}: {self.message}"
        return text + "".join(f"\n  -> {s}" for s in self.suggestions)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)

"""Snapshot: the host-side view of all statistics at one check step."""

from __future__ import annotations

from dataclasses import dataclass, field

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

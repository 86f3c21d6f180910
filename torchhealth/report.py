"""Reading a run back: per-layer health from its TensorBoard event files, and its alerts.jsonl.

Uses TensorBoard's own reader (``EventAccumulator``), so it reads exactly what TensorBoard shows.
"""

from __future__ import annotations

import fnmatch
import glob
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from torchhealth.records import _json_safe
from torchhealth.detectors.diagnosis import summarize
from torchhealth.sinks.jsonl import ALERTS_FILE
from torchhealth.sinks.tensorboard import TAG_PREFIX

EVENT_FILE_PATTERN = "events.out.tfevents.*"
BUILT_IN_FAMILIES = ("grad_norm", "param_grad_norm", "weight_norm", "update_ratio", "zero_fraction", "dead_units", "silent_units",
                     "saturation")
"""Families of the default collectors; the report shows the others under ``LayerHealth.other``."""


class NoRunError(ValueError):
    """Raised when a directory holds no torchhealth run."""


@dataclass
class LayerHealth:
    """One layer's health over a run (None where the statistic was never logged).

    Attributes:
        grad_norm: Latest gradient L2 norm.
        grad_norm_min: Smallest gradient norm logged (vanishing shows here).
        grad_norm_max: Largest gradient norm logged; non-finite if any was (exploding shows here).
        dead_units: Latest fraction of the layer's units that never activated in a window.
        update_ratio: Latest ||update|| / ||weight||.
        other: ``{family: latest value}`` of the families of collectors added by the user
            (``health/<family>/<layer>`` tags of no built-in family).
    """

    grad_norm: float | None = None
    grad_norm_min: float | None = None
    grad_norm_max: float | None = None
    dead_units: float | None = None
    update_ratio: float | None = None
    other: dict[str, float] = field(default_factory=dict)


@dataclass
class RunReport:
    """What one run directory says about training health.

    Attributes:
        run_dir: The directory.
        last_step: The last step with health scalars (None if only alerts were written).
        loss: Latest logged training loss.
        layers: ``{layer: LayerHealth}`` in the order layers were first seen.
        alerts: The run's alerts as written to ``alerts.jsonl`` (dicts, oldest first).
    """

    run_dir: str
    last_step: int | None = None
    loss: float | None = None
    layers: dict[str, LayerHealth] = field(default_factory=dict)
    alerts: list[dict[str, Any]] = field(default_factory=list)

    def diagnosis(self) -> dict[str, Any]:
        """The run's diagnosis from its alerts: root causes with what followed, ranked fixes, advisories.

        See ``torchhealth.detectors.diagnosis.summarize``.
        """
        return summarize(self.alerts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (non-finite numbers become strings such as ``"nan"``).

        ``diagnosis`` names alerts by ``{"kind", "layer", "step"}`` (their full records are in ``alerts``).
        """
        found = self.diagnosis()
        diagnosis = {"roots": [{"alert": _ref(e["alert"]), "consequences": [_ref(c) for c in e["consequences"]]}
                               for e in found["roots"]],
                     "fixes": found["fixes"], "advisories": [_ref(a) for a in found["advisories"]]}
        return _json_safe({"run_dir": self.run_dir, "last_step": self.last_step, "loss": self.loss,
                           "layers": {name: vars(h) for name, h in self.layers.items()}, "alerts": self.alerts,
                           "diagnosis": diagnosis})


def _ref(alert: dict[str, Any]) -> dict[str, Any]:
    return {key: alert.get(key) for key in ("kind", "layer", "step")}


def find_runs(log_dir: str | os.PathLike) -> list[str]:
    """Every directory at or below ``log_dir`` holding event files or ``alerts.jsonl``, sorted.

    Raises:
        NoRunError: When ``log_dir`` does not exist or holds no run.
    """
    log_dir = os.fspath(log_dir)
    if not os.path.isdir(log_dir):
        raise NoRunError(f"{log_dir!r} is not a directory; pass the log_dir given to the Monitor "
                         f"(or the --logdir of `torchhealth demo`)")
    runs = sorted(root for root, _, files in os.walk(log_dir)
                  if ALERTS_FILE in files or any(fnmatch.fnmatch(f, EVENT_FILE_PATTERN) for f in files))
    if not runs:
        raise NoRunError(f"no torchhealth run in {log_dir!r}: no TensorBoard event files and no {ALERTS_FILE} "
                         f"at or below it; runs are written by Monitor(..., log_dir=DIR) or `torchhealth demo`")
    return runs


def load_run(run_dir: str) -> RunReport:
    """Reads one run directory's health scalars and alerts."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    report = RunReport(run_dir=run_dir)
    if glob.glob(os.path.join(run_dir, EVENT_FILE_PATTERN)):
        accumulator = EventAccumulator(run_dir, size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            _file_scalars(report, tag, [(e.step, e.value) for e in accumulator.Scalars(tag)])
    alerts_path = os.path.join(run_dir, ALERTS_FILE)
    if os.path.exists(alerts_path):
        with open(alerts_path, encoding="utf-8") as f:
            report.alerts = [alert for alert in map(_parse_line, f) if alert is not None]
    return report


def load_runs(log_dir: str | os.PathLike) -> list[RunReport]:
    """Reports for every run at or below ``log_dir`` that logged health scalars or alerts.

    Raises:
        NoRunError: When there is none.
    """
    reports = [r for r in map(load_run, find_runs(log_dir)) if r.layers or r.alerts or r.loss is not None]
    if not reports:
        raise NoRunError(f"no torchhealth run in {os.fspath(log_dir)!r}: its event files hold no "
                         f"{TAG_PREFIX}/ scalars and there is no {ALERTS_FILE}")
    return reports


def _file_scalars(report: RunReport, tag: str, points: list[tuple[int, float]]) -> None:
    parts = tag.split("/", 2)
    if parts[0] != TAG_PREFIX or not points:
        return
    points.sort()
    step, latest = points[-1]
    report.last_step = max(step, report.last_step if report.last_step is not None else step)
    if len(parts) == 2:
        if parts[1] == "loss":
            report.loss = latest
        return
    family, layer = parts[1], parts[2]
    values = [v for _, v in points]
    if family == "grad_norm":
        health = report.layers.setdefault(layer, LayerHealth())
        health.grad_norm = latest
        health.grad_norm_min = min(values)
        bad = [v for v in values if not math.isfinite(v)]
        health.grad_norm_max = bad[0] if bad else max(values)
    elif family in ("dead_units", "update_ratio"):
        setattr(report.layers.setdefault(layer, LayerHealth()), family, latest)
    elif family not in BUILT_IN_FAMILIES:
        report.layers.setdefault(layer, LayerHealth()).other[family] = latest


def _parse_line(line: str) -> dict | None:
    """One alert of alerts.jsonl; None for a blank line or the torn last line of a killed run."""
    try:
        return json.loads(line) if line.strip() else None
    except json.JSONDecodeError:
        return None

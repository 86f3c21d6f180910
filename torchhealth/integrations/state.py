"""A Monitor's resumable state, for framework callbacks that save it in checkpoints."""

from __future__ import annotations

from typing import Any

from torchhealth.monitor import Monitor


def monitor_state(monitor: Monitor) -> dict[str, Any]:
    """What a checkpoint keeps of ``monitor``: its step and the detectors' history."""
    if hasattr(monitor, "state_dict"):
        return {"monitor": monitor.state_dict()}
    return {
        "step_count": monitor.step_count,
        "detectors": {d.kind: d.state_dict() for d in monitor.detectors},
        "alerts": [a.to_dict() for a in monitor.alerts],
    }


def restore_monitor(monitor: Monitor, state: dict[str, Any]) -> None:
    """Restores what ``monitor_state`` returned, so steps and detector history continue."""
    if "monitor" in state and hasattr(monitor, "load_state_dict"):
        monitor.load_state_dict(state["monitor"])
        return
    step = int(state.get("step_count", 0))
    monitor.step_count = step
    monitor._interval_start = step  # the next check interval starts at the resumed step
    saved = state.get("detectors", {})
    for detector in monitor.detectors:
        if detector.kind in saved:
            monitor.guard.call(f"detector {detector.kind}", detector.load_state_dict, saved[detector.kind])

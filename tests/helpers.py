"""Shared test helpers: a test-only detector and an event-file reader."""

from __future__ import annotations

import glob
import os

from torchhealth.detectors import Detector
from torchhealth.detectors.alert import Alert


class NonfiniteIsCritical(Detector):
    """Test detector: a critical alert for every snapshot that saw a non-finite value."""

    kind = "test_nonfinite"

    def check(self, snapshot, facts):
        if not snapshot.nonfinite:
            return []
        source, step = min(snapshot.nonfinite.items(), key=lambda kv: kv[1])
        return [Alert(kind=self.kind, layer=None, step=step, severity="critical", value=float("nan"),
                      message=f"{source} went non-finite", suggestions=["lower the learning rate"])]


def scalar_tags(log_dir: str) -> set[str]:
    """Every scalar tag in the event files directly under ``log_dir`` (read with TensorBoard's reader)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert glob.glob(os.path.join(log_dir, "events.out.tfevents.*")), f"no event files in {log_dir}"
    acc = EventAccumulator(log_dir, size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return set(acc.Tags()["scalars"]) | set(acc.Tags().get("tensors", []))

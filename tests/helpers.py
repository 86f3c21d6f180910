"""Shared test helpers."""

from __future__ import annotations

import glob
import os


def scalar_tags(log_dir: str) -> set[str]:
    """Every scalar tag in the event files directly under ``log_dir`` (read with TensorBoard's reader)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert glob.glob(os.path.join(log_dir, "events.out.tfevents.*")), f"no event files in {log_dir}"
    acc = EventAccumulator(log_dir, size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return set(acc.Tags()["scalars"]) | set(acc.Tags().get("tensors", []))

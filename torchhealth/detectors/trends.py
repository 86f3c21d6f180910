"""Small, robust statistics over a detector's own history (medians, never single points)."""

from __future__ import annotations

import math
import statistics
from typing import Sequence


def median(values: Sequence[float]) -> float:
    """Median of the finite values (NaN when there are none)."""
    if values and math.isfinite(sum(values)):  # the usual case, tested in one pass: all finite
        return statistics.median(values)
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def progress(losses: Sequence[float], window: int) -> float | None:
    """Relative loss drop over the last ``window`` checks, from medians of 3 at each end.

    Returns None until ``window + 3`` values exist; positive means the loss fell.
    """
    if len(losses) < window + 3:
        return None
    before = median(losses[-window - 3:-window])
    now = median(losses[-3:])
    if not (math.isfinite(before) and math.isfinite(now)):
        return None
    return (before - now) / max(abs(before), 1e-12)


def stalled(losses: Sequence[float], window: int, min_progress: float = 0.05) -> bool:
    """True when the loss fell by less than ``min_progress`` (relative) over ``window`` checks."""
    p = progress(losses, window)
    return p is not None and p < min_progress


def consecutive(flags: Sequence[float]) -> int:
    """How many of the last values in ``flags`` are true (non-zero), counting back from the end."""
    n = 0
    for flag in reversed(flags):
        if not flag:
            break
        n += 1
    return n

"""Numbers as alert messages and suggestions print them: each value carries its meaning."""

from __future__ import annotations

import math


TINY = 1e-8
"""Magnitudes below this print as ``<1e-8``: at float32 resolution they are noise around zero."""


def fmt(value: float | None, digits: int = 3) -> str:
    """A number as a reader should see it: ``exactly 0``, ``<1e-8``, ``inf``, else ``digits`` significant digits."""
    if value is None:
        return "-"
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "exactly 0"
    if abs(value) < TINY:
        return "<1e-8" if value > 0 else ">-1e-8"
    return f"{value:.{digits}g}"

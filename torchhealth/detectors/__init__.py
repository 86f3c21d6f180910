"""Detectors: one file per problem kind, each a small class over snapshot history."""

from __future__ import annotations

from torchhealth.detectors.alert import Alert
from torchhealth.detectors.base import Detector
from torchhealth.options import MonitorOptions


def default_detectors(options: MonitorOptions) -> list[Detector]:
    """The detectors a Monitor runs with ``options``."""
    return []


__all__ = ["Alert", "Detector", "default_detectors"]

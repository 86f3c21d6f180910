"""Detectors: one file per problem kind, each a small class over snapshot history."""

from __future__ import annotations

from torchhealth.records import Alert
from torchhealth.detectors.base import Detector
from torchhealth.detectors.dead_units import DeadUnits
from torchhealth.detectors.exploding_gradient import ExplodingGradient
from torchhealth.detectors.loss_divergence import LossDivergence
from torchhealth.detectors.loss_plateau import LossPlateau
from torchhealth.detectors.nonfinite import NonFinite
from torchhealth.detectors.overfitting import Overfitting
from torchhealth.detectors.saturated_activation import SaturatedActivation
from torchhealth.detectors.static_checks import StaticChecks
from torchhealth.detectors.vanishing_gradient import VanishingGradient

DETECTORS = (NonFinite, ExplodingGradient, VanishingGradient, DeadUnits, SaturatedActivation,
             LossDivergence, LossPlateau, Overfitting, StaticChecks)


def default_detectors() -> list[Detector]:
    """The detectors a Monitor runs by default, with their default thresholds (fresh instances:
    detectors keep history). Add yours with ``[*torchhealth.default_detectors(), MyDetector()]``."""
    return [cls() for cls in DETECTORS]


__all__ = ["Alert", "DETECTORS", "Detector", "default_detectors"] + [cls.__name__ for cls in DETECTORS]

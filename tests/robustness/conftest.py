"""Fixtures of the robustness tests."""

from __future__ import annotations

import pytest
import torch

from robustness_helpers import HighLossDetector, leftover_hooks


@pytest.fixture(autouse=True)
def _no_leaks():
    """Every test must leave no function mode or global module hook behind."""
    torch.manual_seed(0)
    yield
    assert [h for h in leftover_hooks(torch.nn.Module())] == []


@pytest.fixture
def with_detectors(monkeypatch):
    """Makes new Monitors run the given detectors instead of the defaults."""
    def install(*detectors):
        monkeypatch.setattr("torchhealth.monitor.default_detectors", lambda: list(detectors))
        return detectors
    return install


@pytest.fixture
def high_loss():
    """A fresh stateful test detector class (see HighLossDetector)."""
    return HighLossDetector

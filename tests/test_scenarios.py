"""Scenarios end to end: a Monitor with default settings on real (small) training runs.

The fast subset runs always; every other scenario runs with TORCHHEALTH_SLOW=1 (the full picture,
held-out set included, is benchmarks/detection.py).
"""

from __future__ import annotations

import os

import pytest
import torch

from torchhealth.scenarios import DEMO_SCENARIOS, SCENARIOS, run_scenario

FAST = ("exploding", "nonfinite", "lr_above_stability", "huge_init", "healthy_regression_big_targets",
        "healthy_late_bounce", "saturated_tanh", "dead_units", "softmax_before_ce")
SLOW = [name for name in SCENARIOS if name not in FAST and not SCENARIOS[name].heldout]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def check(name: str) -> None:
    scenario = SCENARIOS[name]
    result = run_scenario(scenario)
    if scenario.expected:
        for kind in scenario.expected:
            assert kind in result.kinds, f"{name}: expected {kind}, got {result.kinds}"
        assert all(a.suggestions for a in result.alerts if a.kind in scenario.expected)
    else:
        assert result.alerts == [], f"{name}: false alarm {[str(a) for a in result.alerts]}"


@pytest.mark.parametrize("name", FAST)
def test_fast_scenarios(name):
    check(name)


@pytest.mark.skipif(not os.environ.get("TORCHHEALTH_SLOW"), reason="slow: set TORCHHEALTH_SLOW=1")
@pytest.mark.parametrize("name", SLOW)
def test_slow_scenarios(name):
    check(name)


def test_demo_scenarios_exist_and_say_what_they_show():
    assert set(DEMO_SCENARIOS) <= set(SCENARIOS)
    assert SCENARIOS["healthy"].expected == ()
    assert all(SCENARIOS[n].expected for n in DEMO_SCENARIOS if n != "healthy")


def test_run_scenario_stops_after_nonfinite_losses_and_reports_root():
    steps = []
    result = run_scenario(SCENARIOS["nonfinite"], on_step=lambda step, loss, new: steps.append(step))
    assert result.first_nonfinite_step is not None and result.steps_run < SCENARIOS["nonfinite"].steps
    assert steps == list(range(result.steps_run))
    alert = next(a for a in result.alerts if a.kind == "nonfinite")
    assert alert.step == result.first_nonfinite_step and alert.evidence["root"] == "loss"
    assert len([a for a in result.alerts if a.kind == "nonfinite"]) == 1  # the cascade is one episode


def test_explosion_before_overflow_is_flagged_before_the_first_nonfinite_step():
    result = run_scenario(SCENARIOS["lr_above_stability"])
    assert result.first_step("exploding_gradient") < result.first_nonfinite_step

"""The loss trip-wire: early checks on loss jumps, silence on healthy losses."""

from __future__ import annotations

import math

import pytest
import torch

from torchhealth.collectors.tripwire import LossTripwire
from torchhealth_scenarios import SCENARIOS, run_scenario


def trips(losses, check_every=10, on_host=False):
    """Runs the wire over ``losses``, setting its reference at checks as the monitor does.

    ``on_host``: hand each loss over as a host number (training on the CPU) instead of as a tensor
    that the wire copies (from a GPU).
    """
    wire = LossTripwire(check_every, torch.device("cpu"))
    out, interval = [], []
    for step, value in enumerate(losses):
        if on_host:
            wire.record_value(float(value), 1)
        else:
            wire.record(torch.tensor(float(value)), 1, step % check_every)
        out.append(wire.tripped())
        interval.append(abs(value))
        if step % check_every == 0:  # a check: the reference follows the interval's finite losses
            finite = [v for v in interval if math.isfinite(v)]
            if finite:
                wire.set_typical(sum(finite) / len(finite), len(finite))
            interval = []
    return out

def test_healthy_losses_never_trip():
    falling = [2.3 * 0.97 ** i for i in range(300)]
    noisy_late = [0.01 * (1 + (i % 7) / 2) for i in range(300)]  # bounces of 4x far below the start
    negative = [-1.0 - 0.01 * i for i in range(100)]  # a negative log-likelihood improving
    assert not any(trips([2.3] + noisy_late)) and not any(trips(falling)) and not any(trips(negative))

@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 50.0])
def test_jumps_and_nonfinite_losses_trip(bad):
    assert trips([2.0, 1.9, 1.8, bad]) == [False, False, False, True]

def test_the_reference_follows_the_loss_but_never_drops_below_the_start():
    rising = [1.0] * 11 + [2.5] * 30 + [6.0]  # 6.0 is within 3x of the risen running mean (about 2.45)
    assert not any(trips(rising))
    assert trips([1.0] * 11 + [2.5] * 10 + [6.0])[-1], "a fresh rise moves the running mean only part of the way"
    assert trips([1.0] * 11 + [0.1] * 10 + [2.9, 3.1])[-2:] == [False, True]  # 3x the first typical loss


@pytest.mark.parametrize("losses", [
    [2.3] + [0.01 * (1 + (i % 7) / 2) for i in range(60)],
    [1.0] * 11 + [2.5] * 10 + [6.0],
    [2.0, 1.9, float("nan"), 1.8, float("inf"), 50.0, 1.7],
])
def test_losses_handed_over_on_the_host_trip_as_copied_ones_do(losses):
    assert trips(losses, on_host=True) == trips(losses)


def test_a_reference_beyond_float32_disables_the_wire_instead_of_failing():
    assert trips([3.4e38, 3.4e38, float("inf")]) == [False, False, True]


def test_explosion_is_flagged_before_the_first_nonfinite_loss():
    result = run_scenario(SCENARIOS["exploding"])  # SGD lr far too high: overflow within a few steps
    explosions = [a.step for a in result.alerts if a.kind == "exploding_gradient"]
    assert result.first_nonfinite_step is not None and explosions
    assert min(explosions) < result.first_nonfinite_step


def test_a_loss_that_stays_nonfinite_adds_at_most_three_checks_per_interval():
    import torchhealth
    from torch import nn

    model = nn.Linear(2, 1)
    monitor = torchhealth.Monitor(model, check_every=10, on_alert=lambda a: None)
    checked = []
    for step in range(50):
        loss = (model(torch.ones(2, 2)) - 1).pow(2).mean()
        loss.backward()
        monitor.step(loss * float("nan") if step >= 20 else loss)
        model.zero_grad()
        if monitor.last_snapshot.step == step:
            checked.append(step)
    monitor.close()
    assert checked == [0, 10, 20, 21, 22, 23, 30, 31, 32, 33, 40, 41, 42, 43]


@pytest.mark.parametrize("losses, every", [
    ([1.0, 1.0, 3.5, 1.0, 1.0, 1.0], 2),  # a jump on a check step, within 3x of the limit that check sets
    ([2.5] * 56 + [7.0] + [2.5] * 8, 7),  # a jump on a check step, beyond the limit that check sets
])
def test_host_losses_meet_the_limit_copied_ones_meet_in_the_monitors_order(losses, every):
    """The monitor tests at the start of a step, records, then checks (setting a new limit)."""
    def run(on_host):
        wire, out, interval = LossTripwire(every, torch.device("cpu")), [], []
        for step, value in enumerate(losses):
            out.append(wire.tripped())
            if on_host:
                wire.record_value(value, 1)
            else:
                wire.record(torch.tensor(value), 1, step % every)
            interval.append(abs(value))
            if step % every == 0:
                wire.set_typical(sum(interval) / len(interval), len(interval))
                interval = []
        return out
    assert run(on_host=True) == run(on_host=False)


def test_new_buffers_for_another_device_keep_the_losses_copied_so_far():
    """A loss collector reads quiet steps' losses from these slots at its next check, after a move too."""
    wire = LossTripwire(4, torch.device("cpu"))
    for offset, value in enumerate([1.5, 2.5, 3.5]):
        wire.record(torch.tensor(value), 1, offset)
    slots = wire.copied_values()
    wire._move_buffers(torch.device("cpu"))
    assert wire.copied_values() is not slots
    assert wire.copied_values().tolist() == [1.5, 2.5, 3.5, 0.0]

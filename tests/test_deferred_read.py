"""Checks read one step later (as from a GPU) report exactly what immediate reads report.

On a GPU a check's statistics are copied to the host without waiting and read at the next step.
These tests run that path on the CPU by marking every copy as in flight.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchhealth
from torchhealth import TrainingHealthError
from torchhealth.transfer import HostCopy


@pytest.fixture
def read_later(monkeypatch):
    monkeypatch.setattr(HostCopy, "in_flight", property(lambda self: True))


def dying_net() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1))
    with torch.no_grad():
        model[0].bias[:6] = -50.0  # six units that never fire: dead-unit windows close and report them
    return model


def run(steps: int = 23, **options):
    """Trains a fixed run; returns {check step: snapshot}, the alerts and the steps they arrived at."""
    model = dying_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    monitor = torchhealth.Monitor(model, opt, check_every=3, log_every=6, sample_every=2, window_samples=32,
                                  strict=True, on_alert=[lambda a: None], **options)
    generator = torch.Generator().manual_seed(1)
    snapshots, arrivals = {}, []
    for step in range(steps):
        x = torch.randn(8, 8, generator=generator)
        loss = model(x).pow(2).mean()
        loss.backward()
        if step == 10:
            monitor.log_validation(loss.detach() * 2)
        reported = loss * float("nan") if step == 13 else loss  # trips the wire: a forced check at 14
        arrivals += [(step, alert) for alert in monitor.step(reported)]
        opt.step()
        opt.zero_grad()
        if monitor.last_snapshot is not None:
            snapshots[monitor.last_snapshot.step] = monitor.last_snapshot
    monitor.close()
    snapshots[monitor.last_snapshot.step] = monitor.last_snapshot
    return snapshots, arrivals, monitor


def test_deferred_reads_report_the_same_statistics_and_alerts(read_later):
    later, later_arrivals, _ = run()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(HostCopy, "in_flight", property(lambda self: False))
        now, now_arrivals, _ = run()
    assert sorted(later) == sorted(now) == [0, 3, 6, 9, 12, 14, 15, 18, 21, 22]
    for step in now:
        assert later[step] == now[step], step
    assert any("dead_units" in s.stats for s in now.values()), "the run must close a dead-unit window"
    assert [a.to_dict() for _, a in later_arrivals] == [a.to_dict() for _, a in now_arrivals]
    assert now_arrivals, "the run must raise an alert"
    # alerts of a check read later arrive one step later, still naming the step they are about
    assert [s for s, _ in later_arrivals] == [s + 1 for s, _ in now_arrivals]
    assert all(a.step <= s - 1 for s, a in later_arrivals)


def test_flush_reads_a_pending_check_at_once(read_later):
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1))
    monitor = torchhealth.Monitor(model, check_every=2)
    model(torch.randn(4, 3)).sum().backward()
    assert monitor.step(torch.tensor(1.5)) == []
    assert monitor.last_snapshot is None, "step 0's check is still being read"
    monitor.flush()
    assert monitor.last_snapshot.step == 0 and monitor.last_snapshot.loss == 1.5
    assert monitor.flush() == [], "nothing left to read"
    monitor.close()


def test_critical_alert_of_a_deferred_check_raises_at_the_next_step(read_later):
    model = nn.Linear(2, 1)
    monitor = torchhealth.Monitor(model, check_every=5, on_alert="raise")
    loss = model(torch.randn(3, 2)).sum() * float("nan")
    loss.backward()
    monitor.step(loss)  # step 0: checked, but read at the next step
    with pytest.raises(TrainingHealthError) as caught:
        monitor.step(loss.detach())
    assert caught.value.alert.kind == "nonfinite" and caught.value.alert.step == 0
    monitor.close()


def test_state_dict_and_close_include_a_pending_check(read_later):
    model = nn.Linear(2, 1)
    alerts = []
    monitor = torchhealth.Monitor(model, check_every=5, on_alert=[alerts.append, "raise"])
    loss = model(torch.randn(3, 2)).sum() * float("inf")
    loss.backward()
    monitor.step(loss)
    state = monitor.state_dict()  # reads the pending check; saving a checkpoint never raises
    assert [a["kind"] for a in state["alerts"]] == ["nonfinite"] and len(alerts) == 1
    other = torchhealth.Monitor(nn.Linear(2, 1), check_every=5)
    other.step(torch.tensor(2.0))
    other.close()  # the pending check is read and checked before the monitor goes
    assert other.last_snapshot.step == 0 and other.last_snapshot.loss == 2.0
    monitor.close()


def test_alerts_read_by_state_dict_come_from_the_next_step(read_later):
    """A checkpoint taken between a check and its read must not move the alerts or the raise."""
    model = nn.Linear(2, 1)
    sent = []
    monitor = torchhealth.Monitor(model, check_every=5, on_alert=[sent.append])
    loss = model(torch.randn(3, 2)).sum() * float("nan")
    loss.backward()
    monitor.step(loss)
    monitor.state_dict()  # reads the pending check (the sinks get its alert now, once)
    assert [a.kind for a in sent] == ["nonfinite"]
    assert [a.kind for a in monitor.step(loss.detach())] == ["nonfinite"]  # what a loop acts on
    assert len(sent) == 1 and monitor.step(loss.detach()) == []
    monitor.close()

    raising = torchhealth.Monitor(nn.Linear(2, 1), check_every=5, on_alert="raise")
    raising.step(torch.tensor(float("nan")))
    raising.state_dict()  # does not raise
    with pytest.raises(TrainingHealthError) as caught:
        raising.step(torch.tensor(1.0))  # where the read, and so the raise, would have happened anyway
    assert caught.value.alert.kind == "nonfinite"
    raising.step(torch.tensor(1.0))  # raised once, not again
    raising.close()

"""Resume: a run restarted from a checkpoint neither forgets an ongoing episode nor re-sends old alerts."""

from __future__ import annotations

import io
import math

import pytest
import torch

from robustness_helpers import Net, read_alerts, read_events, train
from torchhealth import Monitor


def checkpoint_roundtrip(state):
    """What a training script does: torch.save with the model, torch.load with weights_only."""
    buffer = io.BytesIO()
    torch.save({"monitor": state}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)["monitor"]


def run(tmp_path, detector, steps, state=None, scale=1.0, **options):
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the loss stays where scale puts it
    monitor = Monitor(model, optimizer=optimizer, log_dir=tmp_path, check_every=5, log_every=5, **options)
    if state is not None:
        monitor.load_state_dict(state)
    train(monitor, model, optimizer, steps, scale=scale)
    return monitor


@pytest.mark.parametrize("resume", [True, False])
def test_ongoing_episode_is_not_sent_again(with_detectors, high_loss, tmp_path, resume):
    with_detectors(high_loss(limit=1e-3))
    first = run(tmp_path, None, steps=30)
    assert [a.kind for a in first.alerts] == ["test_high_loss"]
    state = checkpoint_roundtrip(first.state_dict())
    first.close()

    with_detectors(high_loss(limit=1e-3))
    second = run(tmp_path, None, steps=30, state=state if resume else None)
    second.close()
    sent = read_alerts(tmp_path)
    if resume:
        assert len(sent) == 1, "the episode was ongoing at the checkpoint: nothing new to send"
        assert [a.kind for a in second.alerts] == ["test_high_loss"] and second.alerts[0].step == first.alerts[0].step
    else:
        assert len(sent) == 2, "control: a monitor that forgot the episode sends it again"


def test_new_episode_after_resume_is_sent(with_detectors, high_loss, tmp_path):
    with_detectors(high_loss(limit=1e-3))
    first = run(tmp_path, None, steps=30)
    state = first.state_dict()
    first.close()
    with_detectors(high_loss(limit=1e-3))
    second = run(tmp_path, None, steps=15, state=state, scale=0.0)  # loss 0: the episode ends
    train(second, second.model, second.optimizer, steps=15)  # and starts again
    second.close()
    steps = [a["step"] for a in read_alerts(tmp_path)]
    assert len(steps) == 2 and steps[1] >= 45


def test_step_count_and_event_steps_continue(with_detectors, tmp_path):
    with_detectors()
    first = run(tmp_path, None, steps=12)
    state = first.state_dict()
    first.close()
    second = run(tmp_path, None, steps=8, state=state)
    assert second.step_count == 20
    assert second.last_snapshot.step == 15
    second.close()
    steps = sorted(e.step for e in read_events(str(tmp_path)).Scalars("health/grad_norm/fc1"))
    assert steps == [0, 5, 10, 15]


def test_static_alerts_are_not_sent_again(with_detectors, high_loss, tmp_path):
    with_detectors(high_loss(limit=1e9, static=True))
    first = run(tmp_path, None, steps=3)
    state = first.state_dict()
    first.close()
    with_detectors(high_loss(limit=1e9, static=True))
    second = run(tmp_path, None, steps=3, state=state)
    second.close()
    assert [a["kind"] for a in read_alerts(tmp_path)] == ["test_static"]
    assert [a.kind for a in second.alerts] == ["test_static"]


def test_static_alerts_of_a_monitor_closed_before_stepping_are_sent(with_detectors, high_loss, tmp_path):
    with_detectors(high_loss(limit=1e9, static=True))
    Monitor(Net(), log_dir=tmp_path, on_alert="raise").close()
    assert [a["kind"] for a in read_alerts(tmp_path)] == ["test_static"]


def test_alert_history_survives_non_finite_values(with_detectors, high_loss, tmp_path):
    with_detectors(high_loss(limit=1e-3))
    first = run(tmp_path, None, steps=30)
    first.alerts[0].value = float("nan")
    first.alerts[0].evidence = {"ratio": float("inf")}
    state = checkpoint_roundtrip(first.state_dict())
    first.close()
    with_detectors(high_loss(limit=1e-3))
    second = Monitor(Net())
    second.load_state_dict(state)
    restored = second.alerts[0]
    assert restored.kind == "test_high_loss" and restored.value != restored.value  # NaN round-trips
    second.close()


def test_detectors_are_matched_by_kind(with_detectors, high_loss, tmp_path):
    with_detectors(high_loss(limit=1e-3))
    first = run(tmp_path, None, steps=30)
    state = first.state_dict()
    first.close()
    fresh = high_loss(limit=1e-3)
    fresh.kind = "another_kind"
    resumed = high_loss(limit=1e-3)
    with_detectors(fresh, resumed)
    second = Monitor(Net())
    second.load_state_dict(state)
    assert resumed.ongoing and not fresh.ongoing and fresh.recent == []
    second.close()


@pytest.mark.parametrize("bad", [None, {}, {"version": 99, "step": 3}, {"version": 1, "step": "3"}, [1, 2]])
def test_load_rejects_what_state_dict_did_not_write(bad):
    monitor = Monitor(Net())
    with pytest.raises(ValueError, match=r"expects what Monitor\.state_dict\(\) returned"):
        monitor.load_state_dict(bad)
    monitor.close()


@pytest.mark.parametrize("resume", [True, False])
def test_real_detector_episode_survives_resume(tmp_path, resume):
    """The default detectors: a non-finite loss that lasts across the checkpoint is reported once."""
    def steps(monitor, model, count, nan_from):
        for _ in range(count):
            loss = model(torch.randn(8, 4)).pow(2).mean()
            loss.backward()
            monitor.step(loss * math.nan if monitor.step_count >= nan_from else loss)
            model.zero_grad()

    model = Net()
    first = Monitor(model, log_dir=tmp_path, check_every=5)
    steps(first, model, 30, nan_from=20)
    assert [(a.kind, a.step) for a in first.alerts] == [("nonfinite", 20)]
    state = checkpoint_roundtrip(first.state_dict())
    first.close()

    second = Monitor(model, log_dir=tmp_path, check_every=5)
    if resume:
        second.load_state_dict(state)
    steps(second, model, 30, nan_from=0)
    second.close()
    kinds = [a["kind"] for a in read_alerts(tmp_path)]
    assert kinds == (["nonfinite"] if resume else ["nonfinite", "nonfinite"])

"""Clean detach: close() is idempotent and leaves the model exactly as it found it."""

from __future__ import annotations

import io
import pickle

import pytest
import torch
from torch import nn

from robustness_helpers import Net, alert_texts, leftover_hooks, read_alerts, read_events, train
import torchhealth
from torchhealth import Monitor


def test_close_removes_everything_and_is_idempotent(tmp_path):
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    monitor = Monitor(model, optimizer=optimizer, log_dir=tmp_path, check_every=2, sample_every=1)
    assert leftover_hooks(model), "attached: hooks are in place (else this test proves nothing)"
    assert model.state_dict().keys() == before.keys(), "hooks must not add state"
    train(monitor, model, optimizer, steps=5)
    after_training = {k: v.clone() for k, v in model.state_dict().items()}
    monitor.close()
    monitor.close()
    assert leftover_hooks(model) == []
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(after_training[k], v) for k, v in model.state_dict().items()), "close changes no weight"
    with pytest.raises(RuntimeError, match=r"step\(\) was called after close\(\)"):
        monitor.step()


def test_closing_an_untrained_monitor_changes_nothing():
    model = Net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    Monitor(model).close()
    assert leftover_hooks(model) == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_model_pickles_after_close():
    model = Net()
    monitor = Monitor(model, sample_every=1)
    train(monitor, model, None, steps=3)
    monitor.close()
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    clone = torch.load(buffer, weights_only=False)
    restored = pickle.loads(pickle.dumps(model))
    x = torch.randn(2, 4)
    assert torch.equal(clone(x), model(x)) and torch.equal(restored(x), model(x))
    assert leftover_hooks(clone) == [] and leftover_hooks(restored) == []


def test_close_inside_a_forward_interrupted_by_keyboard_interrupt():
    """A BaseException skips always_call hooks; close() (and the next forward) still clean up."""
    class Interrupted(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            torch.relu(self.fc(x))
            raise KeyboardInterrupt

    model = Interrupted()
    monitor = Monitor(model, sample_every=1)
    with pytest.raises(KeyboardInterrupt):
        model(torch.randn(2, 4))
    monitor.close()
    assert leftover_hooks(model) == []


def test_exception_inside_with_still_flushes(with_detectors, high_loss, tmp_path):
    with_detectors(high_loss(limit=0.0))
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(ZeroDivisionError):
        with Monitor(model, optimizer=optimizer, log_dir=tmp_path, check_every=2, log_every=2) as monitor:
            train(monitor, model, optimizer, steps=9)
            1 / 0
    assert leftover_hooks(model) == []
    assert [a["kind"] for a in read_alerts(tmp_path)] == ["test_high_loss"]
    events = read_events(str(tmp_path))
    assert [e.step for e in events.Scalars("health/grad_norm/fc1")] == [0, 2, 4, 6, 8]
    assert len(alert_texts(events)) == 1 and "test_high_loss" in alert_texts(events)[0]


def test_closing_one_of_two_monitors_leaves_the_other_working():
    model = Net()
    first, second = Monitor(model, check_every=1, sample_every=1), Monitor(model, check_every=1, sample_every=1)
    first.close()
    train(second, model, None, steps=2)
    assert "act" in second.last_snapshot.stats["zero_fraction"]
    second.close()
    assert leftover_hooks(model) == []


def test_watch_detaches_from_model_and_optimizer(tmp_path):
    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    monitor = torchhealth.watch(model, optimizer, log_dir=tmp_path, check_every=2, sample_every=1)
    for _ in range(5):
        loss = model(torch.randn(8, 4)).pow(2).mean()
        loss.backward()
        monitor.log_loss(loss)
        optimizer.step()
        optimizer.zero_grad()
    assert monitor.step_count == 5
    monitor.close()
    monitor.close()
    assert leftover_hooks(model) == []
    assert not optimizer._optimizer_step_pre_hooks and not optimizer._optimizer_step_post_hooks
    optimizer.step()  # the optimizer no longer drives a closed monitor
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    pickle.dumps(optimizer)

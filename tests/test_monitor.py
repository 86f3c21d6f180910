"""The Monitor's public contract: two-line use, alert delivery policies, clean close."""

from __future__ import annotations

import io
import logging
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchhealth
from torchhealth import Alert, TrainingHealthError, TrainingHealthWarning
from torchhealth.collectors.loss import LossCollector
from torchhealth.detectors import Detector

from tests.helpers import all_hooks, quiet_steps_tried, run_with_events


class Fires(Detector):
    """Test detector raising one alert of the given severity at each check."""

    kind = "test_kind"

    def __init__(self, severity):
        self.severity = severity

    def check(self, snapshot, facts):
        return [Alert(self.kind, None, snapshot.step, self.severity, 1.0, "boom", ["fix it"])]


def net():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))


def one_step(model, monitor):
    loss = F.cross_entropy(model(torch.randn(2, 1, 6, 6)), torch.tensor([0, 1]))
    loss.backward()
    out = monitor.step(loss)
    model.zero_grad()
    return out


def test_alert_record_fields():
    alert = Alert("dead_units", "features.3", 40, "critical", 0.8, "msg", ["use LeakyReLU"])
    assert (alert.kind, alert.layer, alert.step, alert.severity, alert.value) == ("dead_units", "features.3", 40, "critical", 0.8)
    with pytest.raises(ValueError, match="severity"):
        Alert("x", None, 0, "fatal", 0.0, "m")


def test_step_returns_new_alerts_and_keeps_history():
    model = net()
    monitor = torchhealth.Monitor(model, check_every=2, log_every=2, on_alert=lambda a: None)
    monitor.detectors.append(Fires("warning"))
    got = [one_step(model, monitor) for _ in range(4)]
    assert [len(g) for g in got] == [1, 0, 1, 0]
    assert [a.step for a in monitor.alerts] == [0, 2]
    monitor.close()


def test_log_policy_uses_the_torchhealth_logger(caplog):
    model = net()
    monitor = torchhealth.Monitor(model, check_every=1)
    monitor.detectors.append(Fires("critical"))
    with caplog.at_level(logging.WARNING, logger="torchhealth"):
        one_step(model, monitor)
    assert any(r.name == "torchhealth" and r.levelno == logging.ERROR and "boom" in r.getMessage() for r in caplog.records)


def test_warn_policy():
    model = net()
    monitor = torchhealth.Monitor(model, check_every=1, on_alert="warn")
    monitor.detectors.append(Fires("warning"))
    with pytest.warns(TrainingHealthWarning, match="boom"):
        one_step(model, monitor)


def test_raise_policy_raises_only_on_critical():
    model = net()
    monitor = torchhealth.Monitor(model, check_every=1, on_alert="raise")
    monitor.detectors.append(Fires("warning"))
    one_step(model, monitor)  # warnings do not stop training
    monitor.detectors[-1] = Fires("critical")
    with pytest.raises(TrainingHealthError) as info:
        one_step(model, monitor)
    assert info.value.alert.kind == "test_kind"
    assert monitor.alerts[-1].severity == "critical"


def test_callable_and_list_policies():
    seen = []
    model = net()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monitor = torchhealth.Monitor(model, check_every=1, on_alert=[seen.append, "warn"])
        monitor.detectors.append(Fires("warning"))
        one_step(model, monitor)
    assert len(seen) == 1 and isinstance(seen[0], Alert)
    assert any(issubclass(w.category, TrainingHealthWarning) for w in caught)


@pytest.mark.parametrize("bad", ["print", 3, [], ["log", "shout"]])
def test_invalid_on_alert_names_the_option(bad):
    with pytest.raises(ValueError, match="on_alert"):
        torchhealth.Monitor(net(), on_alert=bad)


def test_close_removes_every_hook_and_model_still_saves(tmp_path):
    model = net()
    before = all_hooks(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    monitor = torchhealth.Monitor(model, log_dir=tmp_path, check_every=1, sample_every=1)
    assert all_hooks(model) > before
    for _ in range(3):
        one_step(model, monitor)
    monitor.close()
    monitor.close()  # safe twice
    assert all_hooks(model) == before
    assert set(model.state_dict()) == set(state)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    pickle.loads(pickle.dumps(model))
    with pytest.raises(RuntimeError, match="after close"):
        monitor.step()


def test_close_removes_functional_tracking():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return F.relu(self.fc(x))

    model = Functional()
    with torchhealth.Monitor(model, check_every=1, sample_every=1) as monitor:
        for _ in range(2):
            model(torch.randn(2, 3)).sum().backward()
            monitor.step()
    assert all_hooks(model) == 0
    assert not torch.nn.modules.module._global_forward_hooks
    assert not torch.nn.modules.module._global_forward_pre_hooks
    assert not torch.overrides._get_current_function_mode_stack()


def test_context_manager_closes_on_exception(tmp_path):
    model = net()
    with pytest.raises(KeyError):
        with torchhealth.Monitor(model, log_dir=tmp_path, check_every=1) as monitor:
            one_step(model, monitor)
            raise KeyError("training failed")
    assert all_hooks(model) == 0
    assert any(p.name.startswith("events") for p in tmp_path.iterdir())


def test_works_without_loss_and_before_any_backward():
    model = net()
    with torchhealth.Monitor(model, check_every=1, strict=True) as monitor:
        assert monitor.step() == []
        assert "grad_norm" not in monitor.last_snapshot.stats


def test_a_monitor_that_fails_to_build_leaves_no_hook(monkeypatch):
    def broken_sinks(self, sinks):
        raise OSError("disk full")

    monkeypatch.setattr(torchhealth.Monitor, "_attach_sinks", broken_sinks)
    model = net()
    with pytest.raises(OSError, match="disk full"):
        torchhealth.Monitor(model)
    assert all_hooks(model) == 0


def test_a_collector_that_fails_to_attach_leaves_no_hook_of_those_attached_before_it():
    class Broken(torchhealth.Collector):
        name = "broken"

        def attach(self, context):
            raise RuntimeError("cannot attach")

    model = net()
    with pytest.raises(RuntimeError, match="cannot attach"):
        torchhealth.Monitor(model, collectors=[*torchhealth.default_collectors(), Broken()])
    assert all_hooks(model) == 0


def test_a_failed_check_stops_monitoring_and_removes_its_hooks(caplog):
    model = net()
    monitor = torchhealth.Monitor(model, check_every=1, sample_every=1)
    before = all_hooks(model)

    def broken(step, final=False):
        raise RuntimeError("detector bug")

    monitor._check = broken
    with caplog.at_level(logging.ERROR, logger="torchhealth"):
        one_step(model, monitor)  # the check fails: logged once, training goes on
    assert any("check failed" in r.getMessage() for r in caplog.records)
    assert before > 0 and all_hooks(model) == before  # still attached until the next step
    one_step(model, monitor)
    assert all_hooks(model) == 0 and monitor.collectors == {}
    monitor.close()


def test_a_loss_changed_in_place_after_recording_keeps_its_recorded_value(strict_monitor):
    """The Hugging Face Trainer scales its loss in place (``loss *= ...``) after the forward hook saw it."""
    model = torch.nn.Linear(2, 1)
    monitor = strict_monitor(model, check_every=2, log_every=2)
    model(torch.randn(3, 2)).pow(2).mean().backward()
    loss = torch.tensor(1.5)
    monitor.log_loss(loss)
    loss *= 100
    monitor.step()
    monitor.flush()
    assert monitor.last_snapshot.loss == 1.5
    assert not monitor.collectors["loss"].tripped(), "the trip-wire saw the recorded value, not the scaled one"


@pytest.mark.parametrize("host_losses, dynamo", [(True, True), (False, True), (True, False)],
                         ids=["losses on the host", "losses on a device", "torch.compile not loaded"])
def test_steps_with_nothing_but_a_loss_to_record_take_the_quiet_path_and_change_nothing(monkeypatch, host_losses, dynamo):
    """On a device, a quiet step's loss goes only to the trip-wire's host slot and comes back at the check.

    Without torch.compile loaded (older PyTorch, optimizers outside ``torch.optim``) unsampled
    forwards need no hook at all, and steps are quiet all the same.
    """
    def run(quiet_path):
        monkeypatch.undo()
        if not dynamo:
            monkeypatch.setattr("torchhealth.collectors.activation_hooks.compiler_loaded", lambda: False)
        return run_with_events(quiet_path, monkeypatch, host_losses)

    quiet_snapshots, quiet_alerts, tried = run(True)
    full_snapshots, full_alerts, not_tried = run(False)
    assert not_tried == [] and sum(tried) >= 25, f"the quiet path ran on {sum(tried)} of 60 steps"
    assert [s.step for s in quiet_snapshots] == [s.step for s in full_snapshots]
    assert {24, 28} <= {s.step for s in full_snapshots}, "the spikes at steps 23 and 27 forced checks at the next step"
    for quiet, full in zip(quiet_snapshots, full_snapshots):
        assert (quiet.loss, quiet.val_loss, quiet.nonfinite, quiet.stats) == (full.loss, full.val_loss, full.nonfinite, full.stats), quiet.step
    assert quiet_alerts == full_alerts and "nonfinite" in [kind for kind, _, _, _ in full_alerts]
    # the checkpoint loaded at step 47 was saved before that step's step(): later steps count one lower
    assert {"loss": 52} in [s.nonfinite for s in full_snapshots]


def test_step_after_close_raises_between_checks():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    monitor = torchhealth.Monitor(model, torch.optim.SGD(model.parameters(), lr=0.1), on_alert=lambda a: None)
    for _ in range(3):
        loss = model(torch.randn(8, 4)).pow(2).mean()
        loss.backward()
        monitor.step(loss)
    assert monitor._quiet_from <= monitor.step_count < monitor._quiet_until, "the next step would have been quiet"
    monitor.close()
    with pytest.raises(RuntimeError, match="after close"):
        monitor.step(loss)


def test_a_step_count_set_from_outside_is_checked_on_its_own_schedule():
    """A resumed run may start counting anywhere (``start_at``: the Hugging Face callback does)."""
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))
    monitor = torchhealth.Monitor(model, torch.optim.SGD(model.parameters(), lr=0.01), check_every=10,
                                  log_every=10, sample_every=10, on_alert=lambda a: None)
    checked = [0]
    for step in range(32):
        if step == 3:
            monitor.start_at(10)  # forward, past the schedule's next check
        if step == 15:
            monitor.start_at(5)  # back, before a check already passed
        loss = model(torch.randn(4, 2)).pow(2).mean()
        loss.backward()
        monitor.step(loss)
        model.zero_grad()
        if monitor.last_snapshot.step != checked[-1]:
            checked.append(monitor.last_snapshot.step)
    assert checked == [0, 10, 20, 10, 20]
    with pytest.raises(ValueError, match="step number"):
        monitor.start_at(-1)


@pytest.mark.parametrize("host_losses", [True, False], ids=["losses on the host", "losses on a device"])
def test_a_checkpoint_loaded_after_a_nan_forgets_the_quiet_steps_it_rolled_back(monkeypatch, host_losses):
    """Rolling back to a checkpoint when the loss went NaN must not report that NaN at the next check."""
    if not host_losses:
        monkeypatch.setattr(LossCollector, "_host_view", lambda self: None)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    monitor = torchhealth.Monitor(model, opt, check_every=10, log_every=10, sample_every=100, on_alert=lambda a: None)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))

    def train(scale: float = 1.0) -> None:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        monitor.step(loss * scale)
        opt.step()
        opt.zero_grad()

    for _ in range(11):
        train()
    saved = monitor.state_dict()
    for _ in range(3):
        train()
    train(float("nan"))  # step 14
    monitor.load_state_dict(saved)  # back to step 11
    train()
    monitor.flush()
    assert monitor.last_snapshot.step == 11 and monitor.last_snapshot.nonfinite == {}
    assert "nonfinite" not in [a.kind for a in monitor.alerts]
    monitor.close()


def test_torch_compile_loaded_between_checks_ends_the_quiet_steps_so_its_hook_is_in_place(monkeypatch):
    """Without torch.compile loaded, unsampled forwards need no hook and steps are quiet; once it is
    loaded, the next step is a full one, which puts the compile-safe pre-forward hook in place."""
    loaded = [False]
    monkeypatch.setattr("torchhealth.collectors.activation_hooks.compiler_loaded", lambda: loaded[0])
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    monitor = torchhealth.Monitor(model, torch.optim.SGD(model.parameters(), lr=0.01), on_alert=lambda a: None)
    taken = quiet_steps_tried(monkeypatch)
    for step in range(6):
        if step == 4:
            loaded[0] = True
        loss = model(torch.randn(8, 4)).pow(2).mean()
        loss.backward()
        monitor.step(loss)
        hooked = monitor.collectors["activations"].hooks._start_handle is not None
        assert hooked == (step >= 4) or step == 0, step  # step 0 is sampled: its hook goes at its end
    assert taken == [True, True, True, False, True], "steps 1-3 quiet; step 4 a full one once torch.compile is loaded"
    monitor.close()


def test_parts_of_the_users_own_are_validated_at_construction():
    model = net()
    with pytest.raises(TypeError, match=r"\[\*torchhealth.default_detectors\(\), yours\]"):
        torchhealth.Monitor(model, detectors=Fires("warning"))  # one detector, not a list
    with pytest.raises(TypeError, match="torchhealth.Sink instances"):
        torchhealth.Monitor(model, sinks=[lambda alert: None])
    with pytest.raises(ValueError, match="more than one collector named \\['loss'\\]"):
        torchhealth.Monitor(model, collectors=[*torchhealth.default_collectors(), torchhealth.collectors.LossCollector()])
    assert all_hooks(model) == 0
    monitor = torchhealth.Monitor(model, detectors=[Fires("warning")], sinks=[], check_every=1, on_alert=lambda a: None)
    assert [d.kind for d in monitor.detectors] == ["test_kind"] and monitor.sinks[0].name != "tensorboard"
    monitor.close()

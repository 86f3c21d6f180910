"""Internal faults never crash training: the failing part is logged once and switched off.

Every fault is injected into real code (a monkeypatched method, a detector or a sink that raises);
the training loop must run to the end, the rest of the monitor must keep working, and
``strict=True`` must re-raise the injected error instead.
"""

from __future__ import annotations

import logging

import pytest
import torch

from robustness_helpers import Net, leftover_hooks, read_alerts, train
from torchhealth import Monitor, TrainingHealthError
from torchhealth.collectors import ActivationCollector, GradientCollector, LossCollector, WeightCollector
from torchhealth.collectors.activation_hooks import ActivationHooks
from torchhealth.collectors.activation_sites import Site
from torchhealth.sinks import JsonlAlertSink, TensorBoardSink
from torchhealth.transfer import HostCopy


class Injected(RuntimeError):
    """The fault the tests inject."""


def boom(*args, **kwargs):
    raise Injected("injected fault")


def fault_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "torchhealth" and r.exc_info and r.exc_info[0] is Injected]


def make(strict=False, **options):
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = Monitor(model, optimizer=optimizer, strict=strict, check_every=2, log_every=2, sample_every=1,
                      **options)
    return model, optimizer, monitor


def families(monitor) -> set[str]:
    return set(monitor.last_snapshot.stats)


COLLECTOR_FAULTS = [
    (GradientCollector, "state", {"grad_norm", "param_grad_norm"}),
    (GradientCollector, "reset_interval", {"grad_norm", "param_grad_norm"}),
    (GradientCollector, "finish", {"grad_norm", "param_grad_norm"}),
    (WeightCollector, "state", {"weight_norm", "update_ratio"}),
    (WeightCollector, "finish", {"weight_norm", "update_ratio"}),
    (WeightCollector, "remember_weights", {"weight_norm", "update_ratio"}),  # one part: the whole collector
    (ActivationCollector, "state", {"zero_fraction", "saturation", "silent_units"}),
    (ActivationCollector, "reset_interval", {"zero_fraction", "saturation", "silent_units"}),
    (ActivationCollector, "finish", {"zero_fraction", "saturation", "silent_units"}),
    (ActivationCollector, "_observe", {"zero_fraction", "saturation", "silent_units"}),  # runs inside the forward hooks
    (Site, "observe", {"zero_fraction", "saturation", "silent_units"}),  # a site's kernels, inside the hooks
    (ActivationHooks, "_start_sampled_forward", {"zero_fraction", "saturation", "silent_units"}),  # the model pre-hook's work
]


@pytest.mark.parametrize("cls, method, lost", COLLECTOR_FAULTS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_collector_fault_switches_only_that_part_off(monkeypatch, caplog, cls, method, lost):
    monkeypatch.setattr(cls, method, boom)
    model, optimizer, monitor = make()
    with caplog.at_level(logging.WARNING, logger="torchhealth"):
        train(monitor, model, optimizer, steps=20)
    records = fault_records(caplog)
    assert len(records) == 1, "a failing part is logged exactly once"
    assert "switched off; training continues" in records[0].getMessage()
    # a switched-off activation collector is no sign of hooks that never run
    assert not [r for r in caplog.records if "ran on none of" in r.getMessage()]
    assert monitor.step_count == 20
    everything = {"grad_norm", "param_grad_norm", "weight_norm", "update_ratio", "zero_fraction", "saturation",
                  "silent_units"}
    assert families(monitor) == everything - lost
    assert monitor.last_snapshot.loss is not None
    monitor.close()
    assert leftover_hooks(model) == []


def test_failed_activation_hooks_are_removed_from_the_model(monkeypatch, caplog):
    monkeypatch.setattr(ActivationCollector, "_observe", boom)
    model, optimizer, monitor = make()
    with caplog.at_level(logging.ERROR, logger="torchhealth"):
        train(monitor, model, optimizer, steps=3)
    assert leftover_hooks(model) == [], "a switched-off collector must not keep running hooks"
    monitor.close()


def test_loss_collector_fault(monkeypatch, caplog):
    monkeypatch.setattr(LossCollector, "record", boom)
    model, optimizer, monitor = make()
    with caplog.at_level(logging.ERROR, logger="torchhealth"):
        train(monitor, model, optimizer, steps=10)
    assert len(fault_records(caplog)) == 1
    assert monitor.last_snapshot.loss is None and "grad_norm" in families(monitor)


def test_bad_loss_value_is_logged_not_raised(caplog):
    model, optimizer, monitor = make()
    with caplog.at_level(logging.ERROR, logger="torchhealth"):
        for _ in range(4):
            model(torch.randn(2, 4)).sum().backward()
            monitor.step("not a loss")
    assert "loss must be a tensor or a number, got str" in caplog.text
    assert "grad_norm" in families(monitor)


@pytest.mark.parametrize("phase", ["__init__", "values"])  # the device side of a check, and the host side
def test_whole_check_fault_keeps_training(monkeypatch, caplog, phase):
    monkeypatch.setattr(HostCopy, phase, boom)
    model, optimizer, monitor = make()
    with caplog.at_level(logging.ERROR, logger="torchhealth"):
        train(monitor, model, optimizer, steps=10)
    assert len(fault_records(caplog)) == 1 and monitor.step_count == 10


class BrokenDetector:
    kind = "broken"

    def __init__(self, method: str) -> None:
        self.method = method

    def check(self, snapshot, facts):
        return boom() if self.method == "check" else []

    def static_check(self, model, facts):
        return boom() if self.method == "static_check" else []

    def state_dict(self):
        return boom() if self.method == "state_dict" else {}

    def load_state_dict(self, state):
        boom()


@pytest.mark.parametrize("method", ["check", "static_check", "state_dict"])
def test_detector_fault(with_detectors, high_loss, caplog, tmp_path, method):
    with_detectors(BrokenDetector(method), high_loss(limit=0.0))
    model, optimizer, monitor = make(log_dir=tmp_path)
    with caplog.at_level(logging.ERROR, logger="torchhealth"):
        train(monitor, model, optimizer, steps=10)
        state = monitor.state_dict()
    monitor.close()
    assert len(fault_records(caplog)) == 1
    assert [a["kind"] for a in read_alerts(tmp_path)] == ["test_high_loss"], "the healthy detector keeps working"
    assert [d["kind"] for d in state["detectors"]] == ["broken", "test_high_loss"]


def test_detector_failing_to_load_is_switched_off(with_detectors, high_loss, caplog):
    with_detectors(BrokenDetector("load_state_dict"))
    model, optimizer, monitor = make()
    with caplog.at_level(logging.ERROR, logger="torchhealth"):
        monitor.load_state_dict({"version": 1, "step": 5, "alerts": [], "detectors": [{"kind": "broken", "state": {}}]})
        train(monitor, model, optimizer, steps=4)
    assert len(fault_records(caplog)) == 1 and monitor.step_count == 9


def test_callback_fault_leaves_other_sinks_working(with_detectors, high_loss, caplog, tmp_path):
    with_detectors(high_loss(limit=0.0))
    seen = []
    model, optimizer, monitor = make(log_dir=tmp_path, on_alert=[boom, seen.append])
    with caplog.at_level(logging.ERROR, logger="torchhealth"):
        train(monitor, model, optimizer, steps=10)
    monitor.close()
    assert len(fault_records(caplog)) == 1
    assert [a.kind for a in seen] == ["test_high_loss"] and len(read_alerts(tmp_path)) == 1


@pytest.mark.parametrize("sink, method", [(TensorBoardSink, "write_snapshot"), (TensorBoardSink, "write_alerts"),
                                          (JsonlAlertSink, "write_alerts"), (TensorBoardSink, "close")])
def test_sink_fault(with_detectors, high_loss, monkeypatch, caplog, tmp_path, sink, method):
    with_detectors(high_loss(limit=0.0))
    monkeypatch.setattr(sink, method, boom)
    seen = []
    model, optimizer, monitor = make(log_dir=tmp_path, on_alert=seen.append)
    with caplog.at_level(logging.ERROR, logger="torchhealth"):
        train(monitor, model, optimizer, steps=10)
        monitor.close()
    assert len(fault_records(caplog)) == 1
    assert [a.kind for a in seen] == ["test_high_loss"]
    if sink is not JsonlAlertSink:
        assert len(read_alerts(tmp_path)) == 1


STRICT_FAULTS = [(GradientCollector, "state"), (WeightCollector, "finish"), (ActivationCollector, "finish"),
                 (ActivationCollector, "_observe"), (LossCollector, "record"), (TensorBoardSink, "write_snapshot")]


@pytest.mark.parametrize("cls, method", STRICT_FAULTS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_strict_reraises(monkeypatch, tmp_path, cls, method):
    monkeypatch.setattr(cls, method, boom)
    model, optimizer, monitor = make(strict=True, log_dir=tmp_path)
    with pytest.raises(Injected):
        train(monitor, model, optimizer, steps=4)
    monitor.close()
    assert leftover_hooks(model) == [], "a fault raised from inside the forward must not leave hooks or modes"


@pytest.mark.parametrize("method", ["check", "static_check"])
def test_strict_reraises_detector_faults(with_detectors, method):
    with_detectors(BrokenDetector(method))
    with pytest.raises(Injected):
        model, optimizer, monitor = make(strict=True)
        train(monitor, model, optimizer, steps=4)


def test_only_raise_policy_stops_training(with_detectors, high_loss):
    with_detectors(high_loss(limit=0.0, severity="critical"))
    model, optimizer, monitor = make(on_alert="raise")
    with pytest.raises(TrainingHealthError) as info:
        train(monitor, model, optimizer, steps=10)
    assert info.value.alert.kind == "test_high_loss" and monitor.step_count == 3
    monitor.close()


def test_warnings_do_not_stop_training_under_raise(with_detectors, high_loss):
    with_detectors(high_loss(limit=0.0, severity="warning"))
    model, optimizer, monitor = make(on_alert="raise")
    train(monitor, model, optimizer, steps=10)
    assert [a.kind for a in monitor.alerts] == ["test_high_loss"]

"""Property-based tests: random and adversarial statistics never break the monitor or its detectors.

The detector tests are generic over whatever ``default_detectors()`` returns, so they
cover every detector as it lands; the snapshots are generated over every statistic family.
"""

from __future__ import annotations

import io
import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robustness_helpers import Net, leftover_hooks
from torchhealth import Alert, Monitor, MonitorOptions, Snapshot
from torchhealth.detectors import default_detectors
from torchhealth.facts import ModelFacts
from torchhealth.sinks import JsonlAlertSink, TensorBoardSink
from torchhealth.records import TOTAL

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CHECK_EVERY = MonitorOptions().check_every
PARAM_LAYERS = ["fc1", "fc2", "out"]
ACTIVATIONS = {"act": "relu", "fc2:relu": "relu", "squash": "tanh"}
FAMILIES = {  # family -> the layers it is reported for
    "grad_norm": PARAM_LAYERS + [TOTAL], "param_grad_norm": [f"{l}.{p}" for l in PARAM_LAYERS for p in ("weight", "bias")],
    "weight_norm": PARAM_LAYERS, "update_ratio": PARAM_LAYERS, "zero_fraction": ["act", "fc2:relu"],
    "dead_units": ["act", "fc2:relu"], "saturation": ["squash"],
}
ADVERSARIAL = [0.0, -0.0, math.nan, math.inf, -math.inf, 1e-45, 1e-300, 5e-324, 3.4e38, 1e300, -1.0, 1.0]
numbers = st.one_of(st.sampled_from(ADVERSARIAL), st.floats(allow_nan=True, allow_infinity=True))


def facts() -> ModelFacts:
    model = Net()
    known = ModelFacts.from_model(model, torch.optim.SGD(model.parameters(), lr=0.1))
    known.activations.update(ACTIVATIONS)
    for layer in ("fc1", "act", "fc2", "fc2:relu", "squash", "out"):
        known.note_forward(layer)
    return known


def detectors():
    found = default_detectors()
    if not found:
        pytest.skip("default_detectors() returns no detectors yet")
    return found


@st.composite
def adversarial_snapshot(draw, step: int) -> Snapshot:
    stats = {}
    for family in draw(st.lists(st.sampled_from(sorted(FAMILIES)), unique=True)):  # families may be missing
        layers = draw(st.lists(st.sampled_from(FAMILIES[family]), unique=True))  # and layers within them
        stats[family] = {layer: draw(numbers) for layer in layers}
    sources = draw(st.lists(st.sampled_from(["loss", "grad:fc1", "grad:out", "activation:act", "activation:squash"]),
                            unique=True, max_size=3))
    return Snapshot(
        step=step, stats=stats,
        loss=draw(st.none() | numbers), val_loss=draw(st.none() | numbers),
        nonfinite={s: draw(st.integers(max(0, step - CHECK_EVERY + 1), step)) for s in sources},
        skipped_steps=draw(st.integers(0, CHECK_EVERY)),
        window_samples=draw(st.sampled_from([0, 1, MonitorOptions().window_samples, 10**9])))


@st.composite
def adversarial_history(draw) -> list[Snapshot]:
    return [draw(adversarial_snapshot(i * CHECK_EVERY)) for i in range(draw(st.integers(1, 25)))]


def weights_only_roundtrip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@FAST
@given(history=adversarial_history(), cut=st.integers(0, 25))
def test_detectors_never_raise_and_resume_exactly(history, cut):
    """Any statistics: alerts are well-formed, and a detector resumed from state_dict says the same."""
    known = facts()
    uninterrupted, first = detectors(), detectors()
    for detector in uninterrupted:
        assert all(isinstance(a, Alert) for a in detector.static_check(Net(), known))
    cut = min(cut, len(history))
    resumed = detectors()
    for before, after in zip(first, resumed):
        for snapshot in history[:cut]:
            before.check(snapshot, known)
        after.load_state_dict(weights_only_roundtrip(before.state_dict()))
    for one, other in zip(uninterrupted, resumed):
        expected = [a.to_dict() for s in history for a in one.check(s, known) if s.step >= cut * CHECK_EVERY]
        got = [a.to_dict() for s in history[cut:] for a in other.check(s, known)]
        assert got == expected, f"{one.kind}: a resumed detector must continue exactly"
        for alert in got:
            json.dumps(alert, allow_nan=False)


@st.composite
def healthy_history(draw) -> list[Snapshot]:
    """Steady, healthy training: every statistic wobbles a few percent around a sane level, loss creeps down."""
    grad = {l: draw(st.floats(0.05, 2.0)) for l in PARAM_LAYERS}
    weight = {l: draw(st.floats(1.0, 20.0)) for l in PARAM_LAYERS}
    ratio = draw(st.floats(1e-4, 3e-3))
    zero = {l: draw(st.floats(0.2, 0.6)) for l in FAMILIES["zero_fraction"]}
    saturation = draw(st.floats(0.0, 0.05))
    loss, decay = draw(st.floats(0.5, 3.0)), draw(st.floats(0.002, 0.02))
    noise = st.floats(-0.05, 0.05)
    history = []
    for i in range(draw(st.integers(20, 120))):
        wobble = {l: 1 + draw(noise) for l in PARAM_LAYERS}
        grads = {l: grad[l] * wobble[l] for l in PARAM_LAYERS}
        stats = {
            "grad_norm": {**grads, TOTAL: math.sqrt(sum(g * g for g in grads.values()))},
            "weight_norm": {l: weight[l] for l in PARAM_LAYERS},
            "update_ratio": {l: ratio * wobble[l] for l in PARAM_LAYERS},
            "zero_fraction": {l: z * (1 + draw(noise)) for l, z in zero.items()},
            "saturation": {"squash": saturation},
        }
        window = MonitorOptions().window_samples
        if i % 8 == 7:
            stats["dead_units"] = {l: 0.0 for l in FAMILIES["dead_units"]}
        loss *= 1 - decay * (1 + draw(noise))
        history.append(Snapshot(step=i * CHECK_EVERY, stats=stats, loss=loss, val_loss=loss * 1.1 if i % 5 == 0 else None,
                                window_samples=window if i % 8 == 7 else 0))
    return history


@FAST
@given(history=healthy_history())
def test_detectors_stay_quiet_on_steady_healthy_training(history):
    known = facts()
    for detector in detectors():
        alerts = [a for s in history for a in detector.check(s, known)]
        assert alerts == [], f"{detector.kind} false alarm on healthy statistics: {alerts[0]}"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scale=numbers, loss=st.none() | numbers, steps=st.integers(1, 4), batch=st.integers(1, 3))
def test_monitor_pipeline_takes_any_values(scale, loss, steps, batch):
    """Real hooks and collectors, strict=True: non-finite or extreme tensors never raise."""
    model = Net()
    with torch.no_grad():
        model.fc1.weight.mul_(scale)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor(model, optimizer=optimizer, strict=True, check_every=1, sample_every=1)
    for _ in range(steps):
        out = model(torch.randn(batch, 4)).sum()
        out.backward()
        monitor.step(out if loss is None else loss)
        optimizer.step()
        optimizer.zero_grad()
    snapshot = monitor.last_snapshot
    assert all(isinstance(v, float) for family in snapshot.stats.values() for v in family.values())
    if not math.isfinite(scale) and steps == 1:
        assert any(source.startswith(("grad:", "activation:")) for source in snapshot.nonfinite)
    monitor.close()
    assert leftover_hooks(model) == []


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(snapshot=adversarial_snapshot(step=10), value=numbers)
def test_sinks_take_any_values(tmp_path_factory, snapshot, value):
    log_dir = str(tmp_path_factory.mktemp("sinks"))
    alert = Alert("nonfinite", "fc1", 10, "critical", value, "adversarial", evidence={"x": value, "y": [value]})
    tensorboard, jsonl = TensorBoardSink(log_dir), JsonlAlertSink(log_dir)
    tensorboard.write_snapshot(snapshot)
    for sink in (tensorboard, jsonl):
        sink.write_alerts([alert])
        sink.close()
    with open(jsonl.path, encoding="utf-8") as f:
        assert json.loads(f.readline())["kind"] == "nonfinite"

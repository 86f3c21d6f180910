"""torch.compile: create the Monitor on the eager model, then compile; same statistics, no graph breaks."""

from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from torch import nn
from torch._dynamo.utils import counters

import torchhealth


def conv_net() -> nn.Module:
    """Conv, BatchNorm, in-place ReLU, Tanh: the hook paths that compile could break."""
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
                         nn.Flatten(), nn.Linear(4 * 6 * 6, 8), nn.Tanh(), nn.Linear(8, 3))


def train(model: nn.Module, compiled: bool, steps: int, **options):
    """Monitor first, then compile (the order docs/performance.md prescribes); returns snapshots."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    monitor = torchhealth.Monitor(model, opt, strict=True, **options)
    forward = torch.compile(model, backend="aot_eager") if compiled else model
    torch.manual_seed(1)
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,))
    snapshots = [monitor.last_snapshot for step in fit(forward, monitor, opt, x, y, steps)
                 if step % monitor.options.check_every == 0]
    monitor.close()
    return snapshots


def fit(forward, monitor, opt, x, y, steps: int):
    """Yields the step after each of ``steps`` monitored training steps of ``forward`` on one batch."""
    for step in range(steps):
        loss = F.cross_entropy(forward(x), y)
        loss.backward()
        monitor.step(loss)
        opt.step()
        opt.zero_grad()
        yield step


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def test_compiled_model_reports_the_same_statistics_as_eager():
    torch.manual_seed(0)
    model = conv_net()
    options = dict(check_every=3, log_every=3, sample_every=2)
    eager = train(copy.deepcopy(model), compiled=False, steps=7, **options)
    compiled = train(copy.deepcopy(model), compiled=True, steps=7, **options)
    assert counters["graph_break"] == {}, f"graph breaks: {dict(counters['graph_break'])}"
    # one graph per sampling state (discovering, sampled, unsampled), not one per step offset or count
    assert counters["stats"]["unique_graphs"] <= 3
    assert [s.step for s in compiled] == [s.step for s in eager]
    for e, c in zip(eager, compiled):
        assert set(c.stats) == set(e.stats)
        assert {"zero_fraction", "saturation", "grad_norm", "weight_norm"} <= set(c.stats)
        for family, values in e.stats.items():
            assert set(c.stats[family]) == set(values), family
            for layer, value in values.items():
                assert c.stats[family][layer] == pytest.approx(value, rel=1e-4, abs=1e-7), (e.step, family, layer)
        assert c.loss == pytest.approx(e.loss, rel=1e-5)


def test_monitor_adds_no_graph_break_to_the_forward():
    torch.manual_seed(0)
    model = conv_net()
    monitor = torchhealth.Monitor(model, strict=True)
    x = torch.randn(2, 1, 6, 6)
    sampled = torch._dynamo.explain(model)(x)  # the first forward: sampled, discovering
    monitor.step()
    monitor.collectors["activations"].sampling = False
    unsampled = torch._dynamo.explain(model)(x)
    monitor.close()
    for explanation in (sampled, unsampled):
        assert explanation.graph_break_count == 0, explanation.break_reasons
        assert explanation.graph_count == 1
    assert monitor.last_snapshot.stats["zero_fraction"]  # the compiled forward was observed


@pytest.mark.parametrize("case", ["resumed_on_an_unsampled_step", "compiled_after_eager_steps"])
def test_a_model_first_compiled_on_an_unsampled_step_still_reports_activations(case):
    """Unsampled eager forwards carry no hooks; a compiled forward must still end up with them."""
    torch.manual_seed(0)
    model = conv_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    monitor = torchhealth.Monitor(model, opt, strict=True, check_every=2, log_every=2, sample_every=2)
    forward = model
    if case == "resumed_on_an_unsampled_step":  # a resumed run: the first forward is not sampled
        forward = torch.compile(model, backend="aot_eager")
        monitor.load_state_dict({**monitor.state_dict(), "step": 5})
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,))
    reported = []
    for step in range(8):
        if case == "compiled_after_eager_steps" and step == 3:  # step 3 is not sampled
            forward = torch.compile(model, backend="aot_eager")
        loss = F.cross_entropy(forward(x), y)
        loss.backward()
        monitor.step(loss)
        opt.step()
        opt.zero_grad()
        snapshot = monitor.last_snapshot
        if forward is not model and snapshot is not None and snapshot.step == monitor.step_count - 1:
            reported.append("zero_fraction" in snapshot.stats)
    monitor.close()
    assert reported and all(reported), reported


@pytest.mark.parametrize("hook_guards", [False, True])
@pytest.mark.parametrize("other_first", [True, False])
def test_a_graph_traced_for_another_model_of_the_class_is_reported(hook_guards, other_first, caplog):
    """Dynamo does not guard on module hooks by default: an unmonitored model of the same class,
    compiled and called (before the monitored one, or at some step after it), lends the monitored
    model a graph without the monitor's hooks. The monitor says so once, and the setting it names
    gives the monitored model its own graph."""
    torch.manual_seed(0)
    model = conv_net()
    other = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    monitor = torchhealth.Monitor(model, opt, strict=True, check_every=2, log_every=2, sample_every=2)
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,))
    reported = []
    with torch._dynamo.config.patch(skip_nnmodule_hook_guards=not hook_guards):
        forward, forward_other = torch.compile(model, backend="aot_eager"), torch.compile(other, backend="aot_eager")
        for step in range(16):  # eight sampled steps
            if step == (0 if other_first else 4):
                F.cross_entropy(forward_other(x), y).backward()
            loss = F.cross_entropy(forward(x), y)
            loss.backward()
            monitor.step(loss)
            opt.step()
            opt.zero_grad()
            reported.append({"zero_fraction", "saturation"} <= set(monitor.last_snapshot.stats))
    monitor.close()
    warnings = [r.getMessage() for r in caplog.records if "ran on none of" in r.getMessage()]
    if hook_guards:
        assert warnings == [] and all(reported), reported
    else:
        assert not any(reported[6:]), reported
        assert len(warnings) == 1, warnings  # once, not at every sampled step
        assert "'2', '5'" in warnings[0] and "skip_nnmodule_hook_guards = False" in warnings[0]


def test_the_usual_compiled_run_does_not_warn(caplog):
    train(conv_net(), compiled=True, steps=8, check_every=2, log_every=2, sample_every=2)
    assert not [r for r in caplog.records if r.name == "torchhealth"]


class WithCompiledPart(nn.Module):
    """A LightningModule-like root: a compiled part, and a step method that does not call ``forward``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.compile(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh()),
                                  backend="aot_eager")
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.body(x))

    def training_step(self, x, y):
        return F.cross_entropy(self.head(self.body(x)), y)


@pytest.mark.parametrize("through_forward", [True, False])
def test_a_model_with_a_compiled_part_trains_and_reports_activations(through_forward, caplog):
    """The hooks inside the compiled part are traced (no lookup in a dict keyed by modules, which
    dynamo cannot trace when it holds the compiled wrapper) and stay for the unsampled forwards."""
    torch.manual_seed(0)
    model = WithCompiledPart()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    monitor = torchhealth.Monitor(model, opt, strict=True, check_every=2, log_every=2, sample_every=2)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    reported = []
    for _ in range(12):
        loss = F.cross_entropy(model(x), y) if through_forward else model.training_step(x, y)
        loss.backward()
        monitor.step(loss)
        opt.step()
        opt.zero_grad()
        reported.append(set(monitor.last_snapshot.stats) >= {"zero_fraction", "saturation"})
    monitor.close()
    assert all(reported), reported
    assert counters["graph_break"] == {}, dict(counters["graph_break"])
    # one graph per sampling state, and one site per module: the calls of a step are counted afresh
    # even where the root's forward (which used to reset them) is not called
    assert counters["stats"]["unique_graphs"] <= 3, dict(counters["stats"])
    assert sorted(name for name, _ in monitor.collectors["activations"].sites) == ["body.1", "body.3"]
    assert not [r for r in caplog.records if "ran on none of" in r.getMessage()]


def test_functional_activations_beside_a_compiled_part_do_not_recompile_it():
    """The discovery's global hooks and function mode are not put in place again once part of the
    model is compiled: the part's graphs guard on them, and new ones would recompile it each time."""

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.compile(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8)), backend="aot_eager")
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            return self.head(torch.tanh(self.body(x)))  # a functional activation in the eager part

    torch.manual_seed(0)
    model = Model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    monitor = torchhealth.Monitor(model, opt, strict=True, check_every=2, log_every=2, sample_every=2)
    list(fit(model, monitor, opt, torch.randn(8, 6), torch.randint(0, 3, (8,)), steps=16))
    assert monitor.last_snapshot.stats["zero_fraction"].keys() == {"body.1"}
    monitor.close()
    assert counters["stats"]["unique_graphs"] <= 4, dict(counters["stats"])


@pytest.mark.parametrize("strict", [True, False])
def test_a_monitor_given_the_compiled_model_watches_the_model_inside(strict):
    """``Monitor(torch.compile(model))``: the hooks go on the modules the graph traces, not on the
    wrapper (whose attributes dynamo failed to read from inside the graph, stopping training)."""
    torch.manual_seed(0)
    model = conv_net()
    compiled = torch.compile(model, backend="aot_eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    monitor = torchhealth.Monitor(compiled, opt, strict=strict, check_every=2, log_every=2, sample_every=2)
    list(fit(compiled, monitor, opt, torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,)), steps=6))
    assert {"zero_fraction", "saturation"} <= set(monitor.last_snapshot.stats)
    assert "2" in monitor.last_snapshot.stats["grad_norm"] or "0" in monitor.last_snapshot.stats["grad_norm"]
    assert not monitor.guard.disabled
    monitor.close()
    assert counters["graph_break"] == {}, dict(counters["graph_break"])

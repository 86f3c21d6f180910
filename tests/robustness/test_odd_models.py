"""Odd models work with strict=True (any internal error would raise here) and report correct numbers."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustness_helpers import Net, leftover_hooks, train
from torchhealth import Monitor


def strict_monitor(model, optimizer=None, **options):
    return Monitor(model, optimizer=optimizer, strict=True, check_every=1, log_every=1, sample_every=1, **options)


def test_no_parameters():
    model = nn.Sequential(nn.ReLU(), nn.Tanh())
    monitor = strict_monitor(model)
    for _ in range(3):
        monitor.step(model(torch.randn(4, 3)).sum())
    assert "grad_norm" not in monitor.last_snapshot.stats
    assert set(monitor.last_snapshot.stats) == {"zero_fraction", "saturation", "silent_units"}
    monitor.close()


def test_all_frozen():
    model = Net().requires_grad_(False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = strict_monitor(model, optimizer)
    for _ in range(3):
        monitor.step(model(torch.randn(4, 4)).sum())
        optimizer.step()
    stats = monitor.last_snapshot.stats
    assert not {"grad_norm", "param_grad_norm", "weight_norm", "update_ratio"} & set(stats)
    assert "zero_fraction" in stats
    monitor.close()


class PartlyUsed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used, self.unused, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 1)

    def forward(self, x):
        return self.head(self.used(x).relu())


@pytest.mark.parametrize("set_to_none", [True, False])
def test_unused_parameters_are_absent_not_vanishing(set_to_none):
    model = PartlyUsed()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = strict_monitor(model, optimizer)
    for _ in range(5):
        model(torch.randn(4, 4)).pow(2).mean().backward()
        monitor.step()
        optimizer.step()
        optimizer.zero_grad(set_to_none=set_to_none)
    grad = monitor.last_snapshot.stats["grad_norm"]
    assert set(grad) == {"used", "head", "total"}, "a layer that never got a gradient is absent, not zero"
    assert not any(name.startswith("unused") for name in monitor.last_snapshot.stats["param_grad_norm"])
    monitor.close()


def test_sparse_gradients_match_dense_reference():
    class Bag(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.head = nn.Embedding(20, 3, sparse=True), nn.Linear(3, 1)

        def forward(self, idx):
            return self.head(F.relu(self.emb(idx))).sum()

    model = Bag()
    monitor = strict_monitor(model)
    idx = torch.tensor([[1, 2, 2], [3, 2, 19]])  # repeated indices: sparse rows must add up
    model(idx).backward()
    expected = model.emb.weight.grad.to_dense().norm().item()
    assert model.emb.weight.grad.is_sparse
    monitor.step()
    assert monitor.last_snapshot.stats["grad_norm"]["emb"] == pytest.approx(expected, rel=1e-5)
    monitor.close()


def test_module_reused_in_one_forward():
    class Reuse(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.act = nn.Linear(4, 4), nn.Tanh()

        def forward(self, x):
            return self.act(self.fc(self.act(self.fc(x) * 10)))

    model = Reuse()
    monitor = strict_monitor(model)
    x = torch.randn(8, 4)
    first = torch.tanh(model.fc(x) * 10)
    second = torch.tanh(model.fc(first))
    loss = model(x).sum()
    loss.backward()
    expected_grad = torch.cat([p.grad.reshape(-1) for p in model.fc.parameters()]).norm().item()
    monitor.step(loss)
    stats = monitor.last_snapshot.stats
    assert stats["saturation"]["act"] == pytest.approx((first.abs() > 0.97).float().mean().item())
    assert stats["saturation"]["act#1"] == pytest.approx((second.abs() > 0.97).float().mean().item())
    assert stats["grad_norm"]["fc"] == pytest.approx(expected_grad, rel=1e-5)
    monitor.close()


def test_activation_module_returning_a_tuple(caplog):
    class PairReLU(nn.ReLU):
        def forward(self, x):
            return super().forward(x), x

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.act, self.head = nn.Linear(4, 4), PairReLU(), nn.Linear(4, 1)

        def forward(self, x):
            return self.head(self.act(self.fc(x))[0])

    model = Model()
    monitor = strict_monitor(model)
    train(monitor, model, None, steps=3)
    assert "act" not in monitor.last_snapshot.stats.get("zero_fraction", {})
    assert set(monitor.last_snapshot.stats["grad_norm"]) == {"fc", "head", "total"}
    monitor.close()
    assert not [r for r in caplog.records if "ran on none of" in r.getMessage()]  # the hook ran: not unseen


def test_activation_module_the_forward_never_calls_is_reported_once(caplog):
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.act, self.head = nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1)

        def forward(self, x):
            return self.head(self.fc(x).clamp(min=0))  # not through self.act

    model = Model()
    monitor = strict_monitor(model)
    train(monitor, model, None, steps=2)
    assert not [r for r in caplog.records if r.name == "torchhealth"]  # two sampled steps: not yet
    train(monitor, model, None, steps=5)
    monitor.close()
    said = [r.getMessage() for r in caplog.records if r.name == "torchhealth"]
    assert len(said) == 1 and "('act')" in said[0] and "ran on none of the last 3 sampled steps" in said[0], said


@pytest.mark.parametrize("case", ["eval_mode_reentrant_checkpointing", "frozen_backbone_under_no_grad"])
def test_hooks_that_run_on_evaluation_forwards_are_not_reported_as_unseen(case, caplog):
    """The hooks run there but record nothing (evaluation forwards): not the warning's case."""
    from torch.utils.checkpoint import checkpoint

    block, head = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8)), nn.Linear(8, 1)
    model = nn.Sequential(block, head)
    monitor = strict_monitor(model, torch.optim.SGD(model.parameters(), lr=0.01))
    model.eval()  # fine-tuning with the model in eval mode
    for _ in range(6):
        x = torch.randn(8, 4, requires_grad=True)
        if case == "frozen_backbone_under_no_grad":
            with torch.no_grad():
                hidden = block(x)
        else:
            hidden = checkpoint(block, x, use_reentrant=True)
        loss = head(hidden).pow(2).mean()
        loss.backward()
        monitor.step(loss)
    monitor.close()
    assert not [r for r in caplog.records if "ran on none of" in r.getMessage()]


def test_a_copy_of_the_model_made_after_attaching_does_not_feed_the_monitor():
    """An EMA or teacher copy (``copy.deepcopy`` after the monitor attached) carries copies of the
    hooks; they must not add the copy's activations to the monitored model's sites."""
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    monitor = strict_monitor(model, torch.optim.SGD(model.parameters(), lr=0.01))
    teacher = copy.deepcopy(model)
    with torch.no_grad():
        teacher[0].bias.fill_(-100.0)  # every unit of the teacher's ReLU off
    for _ in range(4):
        x = torch.randn(8, 4)
        with torch.no_grad():
            target = teacher(x)
        loss = (model(x) - target).pow(2).mean()
        loss.backward()
        monitor.step(loss)
    assert list(monitor.collectors["activations"].sites) == [("1", 0)]
    assert monitor.last_snapshot.stats["zero_fraction"]["1"] < 1.0  # not the teacher's all-zero output
    monitor.close()


def test_a_step_that_calls_the_model_s_parts_keeps_one_site_per_module():
    """A Lightning ``training_step`` may call the model's parts and never its ``forward`` (whose
    pre-hook used to be the only place the step's calls were counted afresh)."""

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.head = nn.Sequential(nn.Linear(4, 8), nn.ReLU()), nn.Linear(8, 1)

        def training_step(self, x):
            return self.head(self.body(x)).pow(2).mean()

    model = Model()
    monitor = strict_monitor(model, torch.optim.SGD(model.parameters(), lr=0.01))
    for _ in range(6):
        loss = model.training_step(torch.randn(8, 4))
        loss.backward()
        monitor.step(loss)
    assert list(monitor.collectors["activations"].sites) == [("body.1", 0)]
    monitor.close()


def test_batch_size_one_and_unbatched_inputs():
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = strict_monitor(model, optimizer)
    train(monitor, model, optimizer, steps=3, batch=1)
    assert 0.0 <= monitor.last_snapshot.stats["zero_fraction"]["act"] <= 1.0
    x = torch.randn(4)  # no batch dimension at all: another layout, skipped rather than mixed in
    model(x).sum().backward()
    monitor.step()
    assert "act" not in monitor.last_snapshot.stats.get("zero_fraction", {})
    assert "fc1" in monitor.last_snapshot.stats["grad_norm"]
    x = torch.randn(1, 4)
    model(x).sum().backward()
    monitor.step()
    expected = (model.act(model.fc1(x)) == 0).float().mean().item()
    assert monitor.last_snapshot.stats["zero_fraction"]["act"] == pytest.approx(expected)
    monitor.close()


class FailsMidway(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.act, self.head = nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1)
        self.fail = False

    def forward(self, x):
        h = F.relu(self.act(self.fc(x)))
        if self.fail:
            raise ValueError("bad batch")
        return self.head(torch.sigmoid(h))


def test_forward_that_raises_leaves_monitor_consistent():
    model = FailsMidway()
    monitor = strict_monitor(model)
    train(monitor, model, None, steps=2)  # discovers the functional sites
    model.fail = True
    for _ in range(3):
        with pytest.raises(ValueError, match="bad batch"):
            model(torch.randn(4, 4))
        assert not torch.overrides._get_current_function_mode_stack(), "the function mode must be left"
        assert not nn.modules.module._global_forward_hooks and not nn.modules.module._global_forward_pre_hooks
    model.fail = False
    monitor.step()  # a step whose forward failed: nothing to report, nothing breaks
    x = torch.randn(16, 4)
    loss = model(x).sum()
    loss.backward()
    monitor.step(loss)
    expected = (model.act(model.fc(x)) == 0).float().mean().item()
    assert monitor.last_snapshot.stats["zero_fraction"]["act"] == pytest.approx(expected)
    assert "model:sigmoid" in monitor.last_snapshot.stats["saturation"]
    monitor.close()
    assert leftover_hooks(model) == []


def test_batchnorm_rejecting_batch_of_one():
    """torch itself raises inside forward (BatchNorm needs more than one value per channel)."""
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 1))
    monitor = strict_monitor(model)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        model(torch.randn(1, 4))
    assert not torch.overrides._get_current_function_mode_stack()
    train(monitor, model, None, steps=2, batch=4)
    monitor.close()
    assert leftover_hooks(model) == []


def test_step_before_any_backward():
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = strict_monitor(model, optimizer)
    monitor.step()
    monitor.step(torch.tensor(2.0))
    assert monitor.last_snapshot.loss == 2.0 and "grad_norm" not in monitor.last_snapshot.stats
    train(monitor, model, optimizer, steps=1)
    assert "grad_norm" in monitor.last_snapshot.stats
    monitor.close()


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_dtype_change_after_attaching(dtype):
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = strict_monitor(model, optimizer)
    train(monitor, model, optimizer, steps=2)
    model.to(dtype)
    x = torch.randn(8, 4, dtype=dtype)
    loss = model(x).float().pow(2).mean()
    loss.backward()
    expected = torch.cat([p.grad.double().reshape(-1) for p in model.fc1.parameters()]).norm().item()
    monitor.step(loss)
    assert monitor.last_snapshot.stats["grad_norm"]["fc1"] == pytest.approx(expected, rel=1e-4)
    optimizer.step()
    optimizer.zero_grad()
    train(monitor, model, optimizer, steps=3)
    assert "update_ratio" in monitor.last_snapshot.stats
    monitor.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("start, end", [("cpu", "cuda"), ("cuda", "cpu")])
def test_model_moved_between_devices_after_attaching(start, end):
    model = Net().to(start)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = strict_monitor(model, optimizer)
    x = torch.randn(8, 4, device=start)
    model(x).sum().backward()
    monitor.step(model(x).sum())
    optimizer.zero_grad()
    model.to(end)
    x = x.to(end)
    loss = model(x).pow(2).mean()
    loss.backward()
    expected = torch.cat([p.grad.reshape(-1) for p in model.fc2.parameters()]).norm().item()
    monitor.step(loss)
    monitor.flush()  # a check on the GPU is read at the next step; flush() reads it now
    assert monitor.last_snapshot.stats["grad_norm"]["fc2"] == pytest.approx(expected, rel=1e-5)
    assert monitor.last_snapshot.loss == pytest.approx(loss.item())
    device = torch.device(end).type
    assert monitor.collectors["loss"].losses.flags.device.type == device, "loss state follows the loss"
    assert {s.fires.device.type for s in monitor.collectors["activations"].sites.values()} == {device}
    optimizer.step()
    optimizer.zero_grad()
    for _ in range(3):
        loss = model(torch.randn(8, 4, device=end)).pow(2).mean()
        loss.backward()
        monitor.step(loss)
        optimizer.step()
        optimizer.zero_grad()
    monitor.flush()
    assert "update_ratio" in monitor.last_snapshot.stats
    monitor.close()


def test_evaluation_under_inference_mode_before_and_between_training_steps():
    """Sites first created by an eval under inference_mode() must stay updatable by training forwards."""
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = strict_monitor(model, optimizer)
    with torch.inference_mode():
        model(torch.randn(2, 4))
    train(monitor, model, optimizer, steps=3)
    with torch.inference_mode():
        model(torch.randn(2, 4))
    monitor.step()  # closes the interval that counted the eval forward
    x = torch.randn(8, 4)
    loss = model(x).pow(2).mean()
    loss.backward()
    monitor.step(loss)
    expected = (model.act(model.fc1(x)) == 0).float().mean().item()
    assert monitor.last_snapshot.stats["zero_fraction"]["act"] == pytest.approx(expected)
    monitor.close()


@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing_counts_each_forward_once(reentrant):
    """Recomputation during backward re-runs activation modules: not a second call site."""
    from torch.utils.checkpoint import checkpoint

    class Checkpointed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block, self.head = nn.Sequential(nn.Linear(4, 8), nn.ReLU()), nn.Linear(8, 1)

        def forward(self, x):
            return self.head(checkpoint(self.block, x, use_reentrant=reentrant))

    model = Checkpointed()
    monitor = strict_monitor(model)
    x = torch.randn(8, 4, requires_grad=reentrant)
    loss = model(x).sum()
    loss.backward()
    monitor.step(loss)
    expected = (model.block(x) == 0).float().mean().item()
    assert monitor.last_snapshot.stats["zero_fraction"] == {"block.1": pytest.approx(expected)}
    monitor.close()

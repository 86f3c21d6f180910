"""Gradient norms, weight norms and update ratios against naive references computed here."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchhealth.records import TOTAL


def naive_layer_norms(model, attr):
    """sqrt(sum of squares) of ``attr`` ('grad' or 'data') per owning module, the slow way."""
    sums = {}
    for name, p in model.named_parameters():
        t = getattr(p, attr)
        if not p.requires_grad or t is None:
            continue
        layer = name.rsplit(".", 1)[0]
        sums[layer] = sums.get(layer, 0.0) + float((t.double() ** 2).sum())
    return {k: math.sqrt(v) for k, v in sums.items()}


def test_gradient_norms_match_reference(strict_monitor):
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    monitor = strict_monitor(model)
    loss = F.cross_entropy(model(torch.randn(4, 5)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    monitor.step(loss)
    snap = monitor.last_snapshot
    expected = naive_layer_norms(model, "grad")
    for layer, value in expected.items():
        assert snap.stats["grad_norm"][layer] == pytest.approx(value, rel=1e-5)
    total = math.sqrt(sum(v * v for v in expected.values()))
    assert snap.stats["grad_norm"][TOTAL] == pytest.approx(total, rel=1e-5)
    for name, p in model.named_parameters():
        assert snap.stats["param_grad_norm"][name] == pytest.approx(float(p.grad.norm()), rel=1e-5)
    assert snap.loss == pytest.approx(loss.item(), rel=1e-6)


def test_frozen_and_gradless_parameters_are_left_out(strict_monitor):
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 4)
            self.used = nn.Linear(4, 2)
            self.unused = nn.Linear(4, 2)
            self.frozen = nn.Linear(4, 4)
            self.frozen.requires_grad_(False)

        def forward(self, x):
            return self.used(self.body(self.frozen(x)))

    model = TwoHeads()
    monitor = strict_monitor(model)
    out = model(torch.randn(3, 4)).sum()
    out.backward()
    monitor.step(out)
    grads = monitor.last_snapshot.stats["grad_norm"]
    assert set(grads) == {"body", "used", TOTAL}


def test_sparse_gradients(strict_monitor):
    emb = nn.Embedding(10, 3, sparse=True)
    monitor = strict_monitor(emb)
    idx = torch.tensor([1, 1, 4])
    emb(idx).sum().backward()
    monitor.step()
    dense = emb.weight.grad.to_dense()
    assert monitor.last_snapshot.stats["grad_norm"][TOTAL] == pytest.approx(float(dense.norm()), rel=1e-5)


def test_gradient_norms_of_mixed_dtypes_match_reference(strict_monitor):
    """One layer cast to float64 after attaching, one to bfloat16: the one-pass norm falls back per group."""
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    monitor = strict_monitor(model)
    model[0].double()
    model[2].bfloat16()
    out = model[2](model[1](model[0](torch.randn(4, 5, dtype=torch.float64))).bfloat16())
    out.float().pow(2).mean().backward()
    monitor.step()
    expected = naive_layer_norms(model, "grad")
    assert monitor.last_snapshot.stats["grad_norm"] == pytest.approx(
        {**expected, TOTAL: math.sqrt(sum(v * v for v in expected.values()))}, rel=1e-2)


@pytest.mark.parametrize("opt_cls", [torch.optim.SGD, torch.optim.Adam])
def test_update_ratio_is_measured(strict_monitor, opt_cls):
    model = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 2))
    opt = opt_cls(model.parameters(), lr=0.01)
    monitor = strict_monitor(model, opt, check_every=2, log_every=2)
    for step in range(5):
        if step == 3:  # the step before the check at step 4: remember weights ourselves too
            before = {n: p.detach().clone() for n, p in model.named_parameters()}
        loss = model(torch.randn(8, 6)).pow(2).mean()
        loss.backward()
        if step == 4:
            after = {n: p.detach().clone() for n, p in model.named_parameters()}
        monitor.step(loss)
        opt.step()
        opt.zero_grad()
    ratios = monitor.last_snapshot.stats["update_ratio"]
    for layer in ("0", "2"):
        num = sum(float(((after[f"{layer}.{k}"] - before[f"{layer}.{k}"]) ** 2).sum()) for k in ("weight", "bias"))
        den = sum(float((before[f"{layer}.{k}"] ** 2).sum()) for k in ("weight", "bias"))
        assert ratios[layer] == pytest.approx(math.sqrt(num / den), rel=1e-4)
    weights = monitor.last_snapshot.stats["weight_norm"]
    for layer in ("0", "2"):  # read at the check, before that step's optimizer update
        assert weights[layer] == pytest.approx(
            math.sqrt(sum(float((after[f"{layer}.{k}"] ** 2).sum()) for k in ("weight", "bias"))), rel=1e-5)


def test_weights_are_read_and_copied_only_for_log_steps(strict_monitor):
    """Weight norms and update ratios cost parameter-sized passes: only log steps pay them."""
    model = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = strict_monitor(model, opt, check_every=2, log_every=6)
    copies = []
    remember = monitor.collectors["weights"].remember_weights
    monitor.collectors["weights"].remember_weights = lambda: (copies.append(monitor.step_count), remember())[1]
    families = {}
    for _ in range(13):
        loss = model(torch.randn(8, 6)).pow(2).mean()
        loss.backward()
        monitor.step(loss)
        opt.step()
        opt.zero_grad()
        families[monitor.last_snapshot.step] = set(monitor.last_snapshot.stats)
    assert copies == [5, 11], "weights are copied on the step before a log step only"
    for step, names in families.items():
        assert ("weight_norm" in names) == (step % 6 == 0), step
        assert ("update_ratio" in names) == (step in (6, 12)), step
        assert "grad_norm" in names


def test_nonfinite_gradient_is_reported_with_layer_and_step(strict_monitor):
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    monitor = strict_monitor(model)
    for step in range(3):
        out = model(torch.randn(2, 3)).sum()
        out.backward()
        if step == 2:
            model[1].weight.grad[0, 0] = float("nan")
        monitor.step(out)
        model.zero_grad()
    snap = monitor.last_snapshot
    assert snap.nonfinite == {"grad:1": 2}
    assert math.isnan(snap.stats["grad_norm"]["1"])


def test_nonfinite_loss_reports_first_step_and_forces_an_early_check(strict_monitor):
    model = nn.Linear(2, 1)
    monitor = strict_monitor(model, check_every=5, log_every=5)
    snapshots = {}
    for step in range(10):
        out = model(torch.randn(2, 2)).sum()
        loss = out * float("inf") if step in (7, 8) else out
        out.backward()
        monitor.step(loss)
        model.zero_grad()
        snapshots[monitor.last_snapshot.step] = monitor.last_snapshot
    # scheduled checks at 0 and 5; the non-finite loss at step 7 trips the wire: checks at 8 and 9
    assert sorted(snapshots) == [0, 5, 8, 9]
    assert snapshots[8].nonfinite == {"loss": 7}
    assert snapshots[8].loss is not None and math.isfinite(snapshots[8].loss)  # the mean of finite losses
    assert snapshots[9].nonfinite == {}


def test_weight_state_has_the_same_entries_whether_or_not_an_update_was_measured():
    # under torch.distributed the layout of the reduced state is agreed once: it must not change between checks
    from torchhealth.collectors.weights import WeightCollector
    from torchhealth.layers import parameter_layers

    model = nn.Linear(3, 2)
    collector = WeightCollector(list(parameter_layers(model)), torch.device("cpu"))
    first = collector.state()
    collector.remember_weights()
    with torch.no_grad():
        model.weight.add_(1.0)
    second = collector.state()
    assert [(k, tuple(v.shape), op) for k, (v, op) in first.items()] == \
        [(k, tuple(v.shape), op) for k, (v, op) in second.items()]
    assert first["measured"][0][0] == 0 and second["measured"][0][0] == 1
    assert float(second["dw"][0][0]) == pytest.approx(6.0)  # six weights moved by 1

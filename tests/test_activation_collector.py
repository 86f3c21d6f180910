"""Activation statistics against naive references: zero fraction, per-unit activity, saturation."""

from __future__ import annotations

import collections
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.helpers import all_hooks
import torchhealth
from torchhealth.collectors import activations
from torchhealth.collectors import activation_hooks
from torchhealth.collectors.activation_sites import SiteBuffers


def run(monitor, model, *inputs, steps=1):
    for _ in range(steps):
        out = model(*inputs)
        out = out[0] if isinstance(out, tuple) else out
        loss = out.float().pow(2).mean()
        loss.backward()
        monitor.step(loss)
        model.zero_grad()
    return monitor.last_snapshot


def test_linear_relu_zero_fraction_and_dead_units(strict_monitor):
    lin = nn.Linear(6, 8)
    with torch.no_grad():
        lin.bias[:3] = -100.0  # units 0..2 never fire
    model = nn.Sequential(lin, nn.ReLU())
    monitor = strict_monitor(model, window_samples=16)
    x = torch.randn(16, 6)
    snap = run(monitor, model, x)
    ref = torch.relu(lin(x))
    assert snap.stats["zero_fraction"]["1"] == pytest.approx(float((ref == 0).float().mean()))
    dead_ref = float(((ref > 0).sum(0) == 0).float().mean())
    assert dead_ref >= 3 / 8
    assert snap.stats["dead_units"]["1"] == pytest.approx(dead_ref)
    assert snap.window_samples == 16


def test_sparse_but_alive_units_are_not_dead(strict_monitor):
    """Each unit fires for exactly one sample in eight: 87.5% zeros, no dead unit."""
    model = nn.Sequential(nn.Identity(), nn.ReLU())
    monitor = strict_monitor(model, window_samples=64)
    x = -torch.ones(64, 8)
    x[torch.arange(64), torch.arange(64) % 8] = 1.0
    snap = run(monitor, model, x.requires_grad_())
    assert snap.stats["zero_fraction"]["1"] == pytest.approx(7 / 8)
    assert snap.stats["dead_units"]["1"] == 0.0


def test_dead_units_wait_for_a_full_window(strict_monitor):
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    monitor = strict_monitor(model, window_samples=20)
    x = torch.randn(8, 4)
    assert "dead_units" not in run(monitor, model, x).stats  # 8 samples
    assert "dead_units" not in run(monitor, model, x).stats  # 16
    assert "dead_units" in run(monitor, model, x).stats      # 24 >= 20, window closes
    assert "dead_units" not in run(monitor, model, x).stats  # new window


def test_conv_units_are_channels(strict_monitor):
    conv = nn.Conv2d(2, 4, 3, padding=1)
    with torch.no_grad():
        conv.bias[1] = -1e3  # channel 1 dead
    model = nn.Sequential(conv, nn.BatchNorm2d(4), nn.ReLU(inplace=True))
    with torch.no_grad():
        model[1].bias[1] = -1e3
    monitor = strict_monitor(model, window_samples=4)
    x = torch.randn(4, 2, 5, 5)
    snap = run(monitor, model, x)
    assert snap.stats["dead_units"]["2"] == pytest.approx(1 / 4)


def test_sequence_units_are_last_axis(strict_monitor):
    lin = nn.Linear(5, 6)
    with torch.no_grad():
        lin.bias[:2] = -1e3
        lin.bias[2:] = 1e3
    model = nn.Sequential(lin, nn.ReLU())
    monitor = strict_monitor(model, window_samples=8)
    snap = run(monitor, model, torch.randn(2, 4, 5))  # (N, L, C): 8 rows
    assert snap.stats["dead_units"]["1"] == pytest.approx(2 / 6)


def test_inplace_relu_sees_the_rectified_output(strict_monitor):
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(inplace=True), nn.Linear(16, 2))
    monitor = strict_monitor(model)
    x = torch.randn(32, 4)
    snap = run(monitor, model, x)
    ref = torch.relu(model[0](x))
    assert snap.stats["zero_fraction"]["1"] == pytest.approx(float((ref == 0).float().mean()))


def test_module_called_several_times_gets_a_site_per_call(strict_monitor):
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 3)
            self.act = nn.ReLU()

        def forward(self, x):
            return self.act(self.b(self.act(self.a(x))))

    model = Shared()
    monitor = strict_monitor(model)
    x = torch.randn(10, 4)
    snap = run(monitor, model, x)
    first = torch.relu(model.a(x))
    second = torch.relu(model.b(first))
    assert snap.stats["zero_fraction"]["act"] == pytest.approx(float((first == 0).float().mean()))
    assert snap.stats["zero_fraction"]["act#1"] == pytest.approx(float((second == 0).float().mean()))
    assert monitor.facts.forward_order.index("act") < monitor.facts.forward_order.index("act#1")


def test_a_site_first_seen_mid_window_keeps_what_the_other_sites_counted(strict_monitor):
    """A new site lays the collector's buffers out again; the counts of the interval and of the
    dead-unit window so far must move with them."""
    class Branch(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.act1 = nn.Linear(4, 8), nn.ReLU()
            self.fc2, self.act2 = nn.Linear(8, 8), nn.ReLU()
            self.second = False

        def forward(self, x):
            h = self.act1(self.fc1(x))
            return self.act2(self.fc2(h)) if self.second else h

    model = Branch()
    with torch.no_grad():
        model.fc1.weight.zero_()
        model.fc1.weight[2, 0] = 1.0
        model.fc1.bias.copy_(torch.tensor([-100.0, -100.0, -5.0, 1, 1, 1, 1, 1]))  # unit 2 fires if x0 > 5
        model.fc2.weight.zero_()
        model.fc2.bias.copy_(torch.tensor([1.0, 1, 1, 1, -1, -1, -1, -1]))  # units 4..7 never fire
    monitor = strict_monitor(model, check_every=2, log_every=2, window_samples=48)
    second_outputs = []
    model.act2.register_forward_hook(lambda m, a, out: second_outputs.append(out.detach().clone()))
    x = torch.zeros(16, 4)
    run(monitor, model, x + 10)  # step 0, a check: unit 2 fires, in this step only
    run(monitor, model, x)  # step 1
    model.second = True
    snap = run(monitor, model, x)  # step 2: act2 appears; the check covers steps 1 and 2
    assert snap.stats["zero_fraction"]["act1"] == pytest.approx(3 / 8)  # units 0, 1, 2 off in both steps
    assert snap.stats["zero_fraction"]["act2"] == pytest.approx(float((second_outputs[0] == 0).float().mean()))
    assert snap.stats["dead_units"] == {"act1": pytest.approx(2 / 8)}  # 48 samples: unit 2 fired at step 0
    # act1's window closed alone: act2's window goes on with what it counted at step 2
    with torch.no_grad():
        model.fc2.bias[0] = -1.0  # act2's unit 0 fired at step 2 only
    run(monitor, model, x)  # step 3
    snap = run(monitor, model, x)  # step 4: act2 has 48 samples, act1's new window 32
    assert snap.stats["dead_units"] == {"act2": pytest.approx(4 / 8)}


def test_filing_all_relu_sites_at_once_gives_what_filing_each_site_gives(monkeypatch):
    """The usual model (every site once per forward, all ReLU) is filed with four launches; its
    statistics, dead-unit windows and first non-finite steps must be those of the per-site path."""
    def train():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                              nn.Unflatten(1, (16, 1)), nn.Conv1d(16, 8, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
        with torch.no_grad():
            model[2].bias[:5] = -50.0  # five dead units in the second ReLU
        monitor = torchhealth.Monitor(model, strict=True, check_every=4, log_every=4, sample_every=3,
                                      window_samples=16)
        snaps = {}
        for step in range(13):
            x = torch.randn(8, 4)
            if step == 6:  # sampled, at offset 1 of its interval: the first ReLU's output becomes NaN
                x[0, 0] = math.nan
            loss = model(x).pow(2).mean()
            loss.backward()
            monitor.step(loss)
            model.zero_grad()
            snaps[monitor.last_snapshot.step] = monitor.last_snapshot
        batched = bool(monitor.collectors["activations"]._tensors.columns)
        monitor.close()
        return snaps, batched

    batched, used = train()
    assert used, "the usual model takes the batched path"
    lay_out = SiteBuffers.lay_out
    monkeypatch.setattr(SiteBuffers, "lay_out", lambda sites, interval: dataclasses.replace(lay_out(sites, interval), columns=()))
    per_site, used = train()
    assert not used
    assert sorted(batched) == sorted(per_site) == [0, 4, 7, 8, 12]  # the NaN loss forces a check at step 7
    for step, got in batched.items():
        want = per_site[step]
        assert got.nonfinite == want.nonfinite
        for family in ("zero_fraction", "dead_units"):
            assert got.stats.get(family) == want.stats.get(family), (family, step)
    assert batched[7].nonfinite["activation:1"] == 6
    assert batched[4].stats["dead_units"]["3"] >= 5 / 16  # the window closed at step 4
    assert set(batched[0].stats["zero_fraction"]) == {"1", "3", "6"}


def test_functional_relu_is_named_after_its_module(strict_monitor):
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 8)

        def forward(self, x):
            return torch.relu(self.fc(x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Block()
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            return self.head(F.relu(self.block(x) - 0.5))

    model = Net()
    monitor = strict_monitor(model)
    x = torch.randn(12, 4)
    snap = run(monitor, model, x, steps=2)
    inner = torch.relu(model.block.fc(x))
    outer = F.relu(inner - 0.5)
    assert snap.stats["zero_fraction"]["block:relu"] == pytest.approx(float((inner == 0).float().mean()))
    assert snap.stats["zero_fraction"]["model:relu"] == pytest.approx(float((outer == 0).float().mean()))


def test_an_empty_or_scalar_output_does_not_shift_the_names_of_later_calls(strict_monitor):
    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.alpha, self.fc = nn.Parameter(torch.tensor(0.5)), nn.Linear(3, 3)

        def forward(self, x):
            return x + torch.tanh(self.alpha) * torch.tanh(self.fc(x))  # a 0-d tanh first, then the real one

    model = Gated()
    snap = run(strict_monitor(model), model, torch.randn(4, 3))
    assert set(snap.stats["saturation"]) == {"model:tanh"}


def test_nn_relu_is_not_counted_twice_by_the_functional_mode(strict_monitor):
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.act = nn.Linear(3, 3), nn.ReLU()

        def forward(self, x):
            return F.relu(self.act(self.fc(x)))

    monitor = strict_monitor(Mixed())
    snap = run(monitor, monitor.model, torch.randn(4, 3), steps=2)
    assert set(snap.stats["zero_fraction"]) == {"act", "model:relu"}


def test_saturation_of_sigmoid_and_tanh(strict_monitor):
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 6), nn.Sigmoid())
    with torch.no_grad():
        model[0].weight.mul_(10)
    monitor = strict_monitor(model)
    x = torch.randn(20, 3)
    snap = run(monitor, model, x)
    t = torch.tanh(model[0](x))
    s = torch.sigmoid(model[2](t))
    assert snap.stats["saturation"]["1"] == pytest.approx(float((t.abs() > 0.97).float().mean()))
    assert snap.stats["saturation"]["3"] == pytest.approx(float(((s - 0.5).abs() > 0.47).float().mean()))


def test_nonfinite_activation_names_the_site(strict_monitor):
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2), nn.Tanh())
    monitor = strict_monitor(model)
    with torch.no_grad():
        model[2].weight.fill_(float("inf"))
    snap = run(monitor, model, torch.ones(3, 2))
    assert "activation:3" in snap.nonfinite
    assert snap.nonfinite["activation:3"] == 0


def test_model_without_activations(strict_monitor):
    model = nn.Linear(3, 1)
    monitor = strict_monitor(model)
    snap = run(monitor, model, torch.randn(4, 3), steps=2)
    assert "zero_fraction" not in snap.stats and "grad_norm" in snap.stats


@pytest.mark.parametrize("kind", ["lstm", "gru", "transformer"])
def test_recurrent_and_transformer_models(strict_monitor, kind):
    if kind == "transformer":
        model = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2)
    else:
        model = (nn.LSTM if kind == "lstm" else nn.GRU)(8 if kind != "transformer" else 16, 16, batch_first=True)
    monitor = strict_monitor(model)
    x = torch.randn(3, 5, 16 if kind == "transformer" else 8)
    snap = run(monitor, model, x, steps=2)
    assert snap.stats["grad_norm"]["total"] > 0
    if kind == "transformer":  # TransformerEncoderLayer applies F.relu inside its forward
        assert any(name.endswith(":relu") for name in snap.stats["zero_fraction"])


def test_unsampled_forwards_are_not_observed(strict_monitor):
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    monitor = strict_monitor(model, sample_every=3, check_every=1, log_every=1)
    seen = []
    for step in range(6):
        snap = run(monitor, model, torch.randn(2, 3))
        seen.append("zero_fraction" in snap.stats)
    # forwards of steps 0 and 3 are sampled (step 0 always is)
    assert seen == [True, False, False, True, False, False]


def test_unsampled_eager_forwards_run_without_any_monitor_hook(strict_monitor, monkeypatch):
    """Any module hook sends a call down PyTorch's slow path: unsampled forwards must carry none.

    (Once torch.compile is loaded in the process the model's pre-forward hook stays: see below.)
    """
    monkeypatch.setattr(activation_hooks, "compiler_loaded", lambda: False)
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    monitor = strict_monitor(model, sample_every=3, check_every=1, log_every=1)
    carried = []
    for _ in range(6):
        carried.append(all_hooks(model))
        run(monitor, model, torch.randn(2, 3))
    assert [n > 0 for n in carried] == [True, False, False, True, False, False]
    monitor.close()
    assert all_hooks(model) == 0


def test_unsampled_forwards_carry_only_the_model_pre_hook_once_torch_compile_is_loaded(strict_monitor):
    """Creating any torch.optim optimizer imports dynamo, so this is what a real training loop
    pays on an unsampled forward: the one hook a later torch.compile must find (test_compile)."""
    torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)
    assert activation_hooks.compiler_loaded()
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    monitor = strict_monitor(model, sample_every=3, check_every=1, log_every=1)
    carried = []
    for _ in range(4):
        carried.append((len(model._forward_pre_hooks), len(model._forward_hooks), all_hooks(model[1])))
        run(monitor, model, torch.randn(2, 3))
    # sampled: pre- and post-forward hooks on the model, one on the ReLU; unsampled: the pre-hook only
    assert carried == [(1, 1, 1), (1, 0, 0), (1, 0, 0), (1, 1, 1)]
    monitor.close()
    assert all_hooks(model) == 0


def test_switching_hooks_off_and_on_keeps_the_users_hooks_and_registers_each_hook_once(strict_monitor, monkeypatch):
    """Sampled forwards get their hooks back by putting them into the modules' hook dicts, not by new handles."""
    registered = []
    register = nn.Module.register_forward_hook
    monkeypatch.setattr(nn.Module, "register_forward_hook",
                        lambda self, hook, **kw: registered.append(self) or register(self, hook, **kw))
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3), nn.ReLU())
    user_calls = []
    user_handle = model[1].register_forward_hook(lambda m, a, out: user_calls.append(out.shape))
    monitor = strict_monitor(model, sample_every=3, check_every=3, log_every=3)
    seen = []
    for _ in range(7):
        snap = run(monitor, model, torch.randn(2, 3))
        seen.append(("zero_fraction" in snap.stats, snap.step))
    assert len(user_calls) == 7, "the user's hook ran on every forward, sampled or not"
    assert len(model[1]._forward_hooks) == 1 and model[1]._forward_hooks[user_handle.id] is not None
    assert len(registered) == 1 + 1 + 2, "the user hook, then the model post-forward hook and two ReLU hooks, once each"
    assert [seen[i] for i in (0, 3, 6)] == [(True, 0), (True, 3), (True, 6)], "sampled forwards were observed"
    monitor.close()
    assert list(model[1]._forward_hooks) == [user_handle.id] and all_hooks(model[3]) == 0 and not model._forward_hooks


def test_close_removes_a_switched_hook_even_from_a_hook_dict_replaced_since_it_was_registered(strict_monitor):
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    monitor = strict_monitor(model, sample_every=2, check_every=2, log_every=2)
    run(monitor, model, torch.randn(2, 3))  # sampled: the hooks are registered, then switched off
    model[1]._forward_hooks = collections.OrderedDict()  # as some loaders do
    run(monitor, model, torch.randn(2, 3))  # the next forward is sampled: switched on, into the new dict
    assert len(model[1]._forward_hooks) == 1
    monitor.close()
    assert all_hooks(model) == 0
    model(torch.randn(2, 3))
    assert not any(site.seen for site in monitor.collectors["activations"].sites.values())


def test_evaluation_forwards_between_steps_are_not_counted(strict_monitor):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    monitor = strict_monitor(model)
    x = torch.randn(5, 3)
    model.eval()
    with torch.no_grad():
        for _ in range(50):  # a validation loop while the next forward is due to be sampled
            model(-torch.ones(7, 3) * 100)
    model.train()
    snap = run(monitor, model, x)
    ref = torch.relu(model[0](x))
    assert snap.stats["zero_fraction"]["1"] == pytest.approx(float((ref == 0).float().mean()))


def test_many_fp16_calls_of_one_module_in_a_step_raise_no_false_nonfinite(strict_monitor):
    """Calls past the per-module site cap share a site; their fp16 maxima must not add up to inf."""
    class Repeated(nn.Module):
        def __init__(self):
            super().__init__()
            self.act = nn.ReLU()

        def forward(self, x):
            return sum(self.act(x).float().sum() for _ in range(40))

    model = Repeated()
    monitor = strict_monitor(model)
    monitor.step(model(torch.full((4, 8), 3000.0, dtype=torch.float16)))
    assert monitor.last_snapshot.nonfinite == {}
    assert monitor.last_snapshot.stats["zero_fraction"]["act#15"] == 0.0


# -- the layout agreement under torch.distributed (distributed.LayoutAgreement) ---------------------
def _collector(model, **kwargs):
    return activations.ActivationCollector(model, torchhealth.facts.ModelFacts.from_model(model), 4, 64, **kwargs)


def test_adopting_another_ranks_layout_adds_empty_rows_and_keeps_what_this_rank_counted():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2), nn.Tanh())
    collector = _collector(model)
    model(torch.randn(5, 4))
    collector.file_step(0)
    before = {key: torch.as_tensor(values).clone() for key, (values, _) in collector.state().items()}
    mine = collector.layout()
    other = ((("expert", 0), "expert", "relu", 6),) + mine[:1]  # another rank: a site of its own, then one of ours
    assert collector.adopt_layout([other, mine])
    assert [site.name for site in collector.sites.values()] == ["expert", "1", "3"]
    assert collector.layout() == other + mine[1:]
    after = {key: torch.as_tensor(values) for key, (values, _) in collector.state().items()}
    assert torch.equal(after["positive"], torch.cat([torch.zeros(6), before["positive"]]))
    assert torch.equal(after["numel"], torch.cat([torch.zeros(1), before["numel"]]))
    assert torch.equal(after["off"], torch.cat([torch.zeros(1), before["off"]]))
    collector.close()


def test_a_site_adopted_before_it_runs_here_then_counts_as_if_this_rank_had_found_it():
    models = []
    for _ in range(2):  # one per rank, alike
        torch.manual_seed(0)
        models.append(nn.Sequential(nn.Linear(4, 3), nn.ReLU()))
    x = torch.randn(5, 4)
    found, adopted = _collector(models[0]), _collector(models[1])
    models[0](x)
    found.file_step(0)
    assert adopted.adopt_layout([found.layout()])  # another rank found the site; this one has not run it yet
    assert adopted.sites[("1", 0)].placeholder
    models[1](x)
    adopted.file_step(0)
    assert not adopted.sites[("1", 0)].placeholder and adopted.layout() == found.layout()
    for key, (values, _) in found.state().items():
        assert torch.equal(torch.as_tensor(values), torch.as_tensor(adopted.state()[key][0])), key
    found.close()
    adopted.close()


def test_facts_merge_every_ranks_forward_order_and_activations_alike():
    facts = torchhealth.facts.ModelFacts(forward_order=["a", "c"], activations={"c": "relu"})
    facts.in_forward_order(["c", "a"])  # cached: the merge must not leave the old order behind
    facts.agree([["a", "b", "c"], ["a", "c", "d:relu"]], [{"b": "tanh"}, {"c": "relu", "d:relu": "relu"}])
    assert facts.forward_order == ["a", "b", "c", "d:relu"]
    assert list(facts.activations) == ["b", "c", "d:relu"]
    assert facts.in_forward_order(["d:relu", "b", "a"]) == ["a", "b", "d:relu"]
    facts.note_forward("b")  # known already: no change
    assert facts.forward_order == ["a", "b", "c", "d:relu"]


def test_units_that_die_mid_window_are_counted_silent_from_then_on_across_windows(strict_monitor):
    """``silent_units``: units silent for half a window, whatever window boundary lies in between."""
    lin = nn.Linear(4, 8)
    model = nn.Sequential(lin, nn.ReLU())
    monitor = strict_monitor(model, window_samples=40)
    x = torch.randn(8, 4)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.fill_(1.0)  # every unit fires
    assert run(monitor, model, x, steps=3).stats["silent_units"]["1"] == 0.0
    with torch.no_grad():
        lin.bias[:5] = -1.0  # 5 of 8 units die after 24 samples; the 40-sample window closes at 40
    shares = [run(monitor, model, x).stats["silent_units"]["1"] for _ in range(4)]
    assert shares == [0.0, 0.0, 5 / 8, 5 / 8]  # silent for 16, then 24 >= 20 samples (across the window close)
    assert monitor.last_snapshot.stats.get("dead_units", {}).get("1", 0.0) < 0.5  # the firm window saw them fire


def test_nan_outputs_are_not_silence(strict_monitor):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
    monitor = strict_monitor(model, window_samples=16)
    with torch.no_grad():
        model[0].weight.fill_(float("nan"))
    snap = run(monitor, model, torch.randn(8, 4), steps=4)
    assert snap.stats["silent_units"]["1"] == 0.0


class _LateBranch(nn.Module):
    """A ReLU net whose second branch (another ReLU site) runs from a later step."""

    def __init__(self) -> None:
        super().__init__()
        self.side = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
        self.main = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
        self.branch = False

    def forward(self, x):
        out = self.main(x).sum(1, keepdim=True)
        return out + self.side(x).sum(1, keepdim=True) if self.branch else out


def test_silent_units_keep_their_count_when_a_site_joins_later(strict_monitor):
    """The silence counts of every site live in one array laid out as the sites; a site that first runs
    later is laid out in, and the others keep what they counted (by name, not position), across the
    window that closed before it joined."""
    model = _LateBranch()
    monitor = strict_monitor(model, window_samples=40)
    x = torch.randn(8, 4)
    with torch.no_grad():
        model.main[0].weight.zero_()
        model.main[0].bias.copy_(torch.tensor([-1.0] * 5 + [1.0] * 3))  # 5 of 8 units never fire
        model.side[0].weight.zero_()
        model.side[0].bias.fill_(1.0)  # every unit of the late branch fires
    shares = [run(monitor, model, x).stats["silent_units"]["main.1"] for _ in range(5)]  # the window closes at 40
    assert shares == [0.0, 0.0, 5 / 8, 5 / 8, 5 / 8]  # 8 samples a step; silent from 24 >= 20
    model.branch = True
    snap = run(monitor, model, x)  # main's count goes on past the closed window (48, not 8); side is new
    assert snap.stats["silent_units"] == {"main.1": 5 / 8, "side.1": 0.0}
    with torch.no_grad():
        model.side[0].bias.fill_(-1.0)  # now the new site's units die: its count starts here
    shares = [run(monitor, model, x).stats["silent_units"] for _ in range(3)]
    assert [s["side.1"] for s in shares] == [0.0, 0.0, 1.0] and all(s["main.1"] == 5 / 8 for s in shares)

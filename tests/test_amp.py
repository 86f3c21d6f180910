"""AMP in the explicit two-line loop: ``Monitor(model, opt, scaler=scaler)`` between ``scaler.scale(loss).backward()``
and ``scaler.step``. CPU autocast fp16 with ``torch.amp.GradScaler("cpu")``; the watch/Lightning/Hugging Face paths
are in their own test files."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchhealth
from torchhealth.records import TOTAL

from tests.helpers import SnapshotRecorder


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))


def train_fp16(steps: int, *, pass_scaler: bool, init_scale: float = 2.0 ** 40, clip: bool = False, lr: float = 0.05,
               **options):
    """A healthy classifier under CPU fp16 autocast; the huge initial scale makes the scaler skip its first
    steps while it searches for its scale. Returns (monitor, snapshots, reference total norms per step,
    steps the scaler skipped)."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    options = {"check_every": 1, "log_every": 1, "on_alert": lambda a: None, **options}
    monitor = torchhealth.Monitor(model, opt, scaler=scaler if pass_scaler else None, **options)
    recorder = SnapshotRecorder()
    monitor.sinks.append(recorder)
    g = torch.Generator().manual_seed(1)
    reference, skipped = [], []
    for step in range(steps):
        x, y = torch.randn(32, 16, generator=g), torch.randint(0, 4, (32,), generator=g)
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        grads = [p.grad / scaler.get_scale() for p in model.parameters()]
        reference.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        monitor.step(loss)
        if clip:  # the loop's own unscale_, after the monitor read the gradients
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        before = scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        if scaler.get_scale() < before:
            skipped.append(step)
        opt.zero_grad()
    monitor.close()
    return monitor, recorder.snapshots, reference, skipped


def test_a_healthy_fp16_run_gets_no_alarm_and_its_skips_are_counted():
    monitor, snapshots, reference, skipped = train_fp16(30, pass_scaler=True)
    assert len(skipped) >= 3, "the scaler searched for its scale"
    assert [a.kind for a in monitor.alerts if a.kind in ("nonfinite", "exploding_gradient")] == []
    assert sum(s.skipped_steps for s in snapshots) == len(skipped)
    assert all(not s.nonfinite for s in snapshots)
    read = {s.step: s.family("grad_norm").get(TOTAL) for s in snapshots if s.step < 30}
    assert all(read[step] is None for step in skipped), "a skipped step's overflowed gradients are not read"
    taken = [step for step in range(30) if step not in skipped]
    assert [read[step] for step in taken] == pytest.approx([reference[step] for step in taken], rel=1e-4)


def test_the_loops_own_unscale_for_clipping_still_works():
    monitor, snapshots, reference, skipped = train_fp16(20, pass_scaler=True, clip=True)
    assert monitor.step_count == 20 and skipped
    taken = [s for s in snapshots if s.step < 20 and s.step not in skipped]
    assert [s.family("grad_norm")[TOTAL] for s in taken] == pytest.approx([reference[s.step] for s in taken], rel=1e-4)


def test_gradients_the_loop_unscaled_before_step_are_not_divided_again():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    monitor = torchhealth.Monitor(model, opt, scaler=scaler, check_every=1, log_every=1, strict=True)
    with torch.autocast("cpu", dtype=torch.float16):
        loss = F.cross_entropy(model(torch.randn(8, 16)), torch.randint(0, 4, (8,)))
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    expected = float(nn.utils.get_total_norm([p.grad for p in model.parameters()]))
    monitor.step(loss)
    assert monitor.last_snapshot.family("grad_norm")[TOTAL] == pytest.approx(expected, rel=1e-5)
    monitor.close()


def test_a_skipped_step_does_not_measure_an_update_that_never_came():
    _, snapshots, _, skipped = train_fp16(12, pass_scaler=True)
    ratios = {s.step: s.family("update_ratio") for s in snapshots if s.step < 12}
    assert skipped and all(not ratios[step + 1] for step in skipped if step + 1 in ratios)
    assert all(ratios[step] for step in range(1, 12) if step - 1 not in skipped)


def test_without_the_scaler_the_monitor_says_once_how_to_pass_it(caplog):
    with caplog.at_level(logging.WARNING, logger="torchhealth"):
        train_fp16(30, pass_scaler=False)
    hints = [r.getMessage() for r in caplog.records if "scaler=scaler" in r.getMessage()]
    assert len(hints) == 1 and "Monitor(model, optimizer, scaler=scaler)" in hints[0]


def test_no_hint_with_the_scaler_or_without_autocast(caplog):
    with caplog.at_level(logging.WARNING, logger="torchhealth"):
        train_fp16(10, pass_scaler=True)
        model = mlp()
        monitor = torchhealth.Monitor(model, check_every=1, log_every=1, on_alert=lambda a: None)
        loss = F.cross_entropy(model(torch.randn(8, 16)), torch.randint(0, 4, (8,)))
        loss.backward()
        model[0].weight.grad[0, 0] = float("inf")  # non-finite gradients with a finite loss, in fp32
        monitor.step(loss)
        monitor.close()
    assert not [r for r in caplog.records if "scaler=scaler" in r.getMessage()]


def test_a_real_fp16_explosion_is_caught_before_the_first_nan_loss():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.3)  # too high for this regression: it diverges over ~90 steps
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    monitor = torchhealth.Monitor(model, opt, scaler=scaler, on_alert=lambda a: None)  # default schedule
    g = torch.Generator().manual_seed(0)
    w = torch.randn(10, 1, generator=g)
    first_nonfinite = None
    for step in range(150):
        x = torch.randn(64, 10, generator=g)
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.mse_loss(model(x).float(), x @ w)
        if first_nonfinite is None and not math.isfinite(loss.item()):
            first_nonfinite = step
        scaler.scale(loss).backward()
        monitor.step(loss)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
    monitor.close()
    assert first_nonfinite is not None
    exploding = [a for a in monitor.alerts if a.kind == "exploding_gradient"]
    assert exploding and exploding[0].step < first_nonfinite
    assert not [a for a in monitor.alerts if a.kind == "nonfinite" and a.step < first_nonfinite]


def test_scaler_is_validated_at_construction():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with pytest.raises(TypeError, match="GradScaler"):
        torchhealth.Monitor(model, opt, scaler=object())
    with pytest.raises(ValueError, match="needs the optimizer"):
        torchhealth.Monitor(model, scaler=torch.amp.GradScaler("cpu"))
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    scaler = torch.amp.GradScaler("cpu")
    monitor = torchhealth.Monitor(model, opt, scaler=scaler)
    assert "step" in scaler.__dict__
    monitor.close()
    assert "step" not in scaler.__dict__, "close() gives the scaler its own step back"


def test_a_disabled_scaler_leaves_a_real_nan_gradient_an_alert():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", enabled=False)  # the fp32 run of an AMP script
    alerts = []
    monitor = torchhealth.Monitor(model, opt, scaler=scaler, check_every=1, log_every=1, on_alert=alerts.append)
    loss = F.cross_entropy(model(torch.randn(8, 16)), torch.randint(0, 4, (8,)))
    scaler.scale(loss).backward()
    model[2].weight.grad[0, 0] = float("nan")
    monitor.step(loss)
    monitor.close()
    assert [a.kind for a in alerts] == ["nonfinite"]

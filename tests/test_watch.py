"""torchhealth.watch: optimizer-driven steps, gradient accumulation, AMP GradScaler, bf16 autocast."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import torchhealth
from torchhealth.amp import unscale_and_check
from torchhealth.records import TOTAL

from tests.helpers import SnapshotRecorder, batches, make_model


def watched(model, opt, **kwargs):
    monitor = torchhealth.watch(model, opt, check_every=1, log_every=1, on_alert=[lambda a: None], **kwargs)
    recorder = SnapshotRecorder()
    monitor.sinks.append(recorder)
    return monitor, recorder


def test_one_monitor_step_per_optimizer_step_with_gradient_accumulation():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor, recorder = watched(model, opt)
    expected_norms = []
    opt.register_step_pre_hook(lambda o, a, k: expected_norms.append(
        math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters()))))
    data = batches(12)
    for i, (x, y) in enumerate(data):
        loss = nn.functional.mse_loss(model(x), y) / 4
        loss.backward()
        monitor.log_loss(loss)
        if (i + 1) % 4 == 0:
            opt.step()
            opt.zero_grad()
    monitor.close()
    assert monitor.step_count == 3
    assert [s.step for s in recorder.snapshots] == [0, 1, 2]
    # The norm read is the one of the gradient accumulated over 4 micro-batches.
    got = [s.family("grad_norm")[TOTAL] for s in recorder.snapshots]
    assert got == pytest.approx(expected_norms, rel=1e-5)
    assert all(s.loss is not None for s in recorder.snapshots)


def test_close_detaches_from_the_optimizer():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor, _ = watched(model, opt)
    x, y = batches(1)[0]
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    monitor.close()
    opt.step()  # must neither fail nor count
    assert monitor.step_count == 1
    assert not opt._optimizer_step_pre_hooks


def test_watch_rejects_a_missing_optimizer_and_a_bad_scaler():
    with pytest.raises(TypeError, match="Optimizer"):
        torchhealth.watch(make_model(), None)
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="GradScaler"):
        torchhealth.watch(model, opt, scaler=object())
    assert not opt._optimizer_step_pre_hooks and not any(m._forward_hooks for m in model.modules())


def run_amp(use_scaler: bool, poison_step: int | None = None):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16, enabled=use_scaler)
    monitor, recorder = watched(model, opt, scaler=scaler if use_scaler else None)
    for i, (x, y) in enumerate(batches(6)):
        loss = nn.functional.mse_loss(model(x), y)
        scaler.scale(loss).backward()
        if i == poison_step:
            model[0].weight.grad[0, 0] = float("inf")  # what an fp16 overflow looks like to the scaler
        monitor.log_loss(loss)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
    monitor.close()
    return monitor, recorder, scaler


def test_grad_scaler_gradients_are_read_unscaled():
    _, plain, _ = run_amp(use_scaler=False)
    _, scaled, _ = run_amp(use_scaler=True)
    plain_norms = [s.family("grad_norm")[TOTAL] for s in plain.snapshots]
    scaled_norms = [s.family("grad_norm")[TOTAL] for s in scaled.snapshots]
    assert scaled_norms == pytest.approx(plain_norms, rel=1e-5)


def test_skipped_amp_steps_are_counted_not_read():
    monitor, recorder, scaler = run_amp(use_scaler=True, poison_step=2)
    assert monitor.step_count == 5  # 6 iterations, one skipped by the scaler
    assert sum(s.skipped_steps for s in recorder.snapshots) == 1
    assert [s.skipped_steps for s in recorder.snapshots] == [0, 0, 1, 0, 0]
    assert all(not s.nonfinite for s in recorder.snapshots)
    assert all(math.isfinite(s.family("grad_norm")[TOTAL]) for s in recorder.snapshots)
    assert "step" not in scaler.__dict__  # close() restored the scaler


def test_bf16_autocast():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    monitor, recorder = watched(model, opt)
    for x, y in batches(3):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.mse_loss(model(x).float(), y)
        loss.backward()
        monitor.log_loss(loss)
        opt.step()
        opt.zero_grad()
    monitor.close()
    assert len(recorder.snapshots) == 3
    last = recorder.snapshots[-1]
    assert math.isfinite(last.family("grad_norm")[TOTAL]) and last.family("grad_norm")[TOTAL] > 0
    assert not last.nonfinite
    assert last.loss is not None and math.isfinite(last.loss)


def test_unscale_and_check_for_plain_monitor_loops():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    x, y = batches(1)[0]
    scaler.scale(nn.functional.mse_loss(model(x), y)).backward()
    scaled = model[0].weight.grad.clone()
    assert unscale_and_check(scaler, opt) is False
    assert torch.allclose(model[0].weight.grad * 1024.0, scaled)
    assert unscale_and_check(scaler, opt) is False  # second call does not unscale twice
    assert torch.allclose(model[0].weight.grad * 1024.0, scaled)
    scaler.step(opt)  # already unscaled: the scaler's own step still works
    scaler.update()
    opt.zero_grad()
    scaler.scale(nn.functional.mse_loss(model(x), y)).backward()
    model[0].weight.grad[0, 0] = float("nan")
    assert unscale_and_check(scaler, opt) is True


def test_a_skip_after_the_last_step_is_reported_by_close():
    monitor, recorder, _ = run_amp(use_scaler=True, poison_step=5)  # the last iteration is skipped
    assert monitor.step_count == 5
    assert [s.skipped_steps for s in recorder.snapshots] == [0, 0, 0, 0, 0, 1]  # close()'s final check

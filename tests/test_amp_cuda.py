"""AMP on a real GPU: fp16 GradScaler overflows are counted as skipped steps, never read as failures.

On CPU these tests skip; the CPU tests in test_watch.py / test_lightning.py simulate the overflow.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import torchhealth
from tests.helpers import SnapshotRecorder, TinyBody, batches, make_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
BAD_KINDS = {"nonfinite", "exploding_gradient"}


def test_watch_counts_real_fp16_overflows_and_reads_unscaled_gradients():
    model = make_model().cuda()
    # lr and loss scale keep training healthy once the scale has come down: every skip is then one
    # of the scaler's first, deliberately too high, scales (a diverging run would overflow forever)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0 ** 24)  # far too high: the first steps overflow
    alerts = []
    monitor = torchhealth.watch(model, opt, scaler=scaler, check_every=1, log_every=1, on_alert=[alerts.append])
    recorder = SnapshotRecorder()
    monitor.sinks.append(recorder)
    decreases, scales, previous = 0, [], scaler.get_scale()
    data = batches(40)
    for x, y in data:
        x, y = x.cuda(), y.cuda()
        with torch.autocast("cuda", dtype=torch.float16):
            loss = nn.functional.mse_loss(model(x).float(), y)
        scaler.scale(loss).backward()
        monitor.log_loss(loss)
        scales.append(scaler.get_scale())
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        decreases += scaler.get_scale() < previous
        previous = scaler.get_scale()
    monitor.close()
    assert decreases >= 1, "the test needs at least one real overflow"
    assert sum(s.skipped_steps for s in recorder.snapshots) == decreases
    assert monitor.step_count == len(data) - decreases
    assert all(not s.nonfinite for s in recorder.snapshots)
    assert not [a for a in alerts if a.kind in BAD_KINDS], alerts
    norms = [s.family("grad_norm")["total"] for s in recorder.snapshots]
    assert all(math.isfinite(n) for n in norms)
    assert max(norms) < min(scales) / 100  # scaled gradients would be of the order of the scale


def test_watch_bf16_autocast_on_gpu():
    model = make_model().cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    monitor = torchhealth.watch(model, opt, check_every=1, log_every=1, on_alert=[lambda a: None])
    recorder = SnapshotRecorder()
    monitor.sinks.append(recorder)
    for x, y in batches(5):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = nn.functional.mse_loss(model(x.cuda()).float(), y.cuda())
        loss.backward()
        monitor.log_loss(loss)
        opt.step()
        opt.zero_grad()
    monitor.close()
    assert len(recorder.snapshots) == 5
    assert all(math.isfinite(s.family("grad_norm")["total"]) and not s.nonfinite for s in recorder.snapshots)


def test_lightning_16_mixed_on_gpu_counts_real_overflows(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.plugins.precision import MixedPrecision

    from torchhealth.integrations.lightning import TorchHealthCallback

    scaler = torch.amp.GradScaler("cuda", init_scale=2.0 ** 24)
    callback = TorchHealthCallback(check_every=1, log_every=1, on_alert=[lambda a: None])
    class TinyModule(TinyBody, pl.LightningModule):
        pass

    recorder, module, seen = SnapshotRecorder(), TinyModule(), {"decreases": 0, "scale": scaler.get_scale()}

    def on_fit_start():
        callback.monitor.sinks.append(recorder)

    def on_train_batch_end(outputs, batch, batch_idx):
        seen["decreases"] += scaler.get_scale() < seen["scale"]
        seen["scale"] = scaler.get_scale()

    module.on_fit_start, module.on_train_batch_end = on_fit_start, on_train_batch_end
    trainer = pl.Trainer(accelerator="gpu", devices=1, max_steps=30, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                         plugins=[MixedPrecision("16-mixed", "cuda", scaler=scaler)], callbacks=[callback])
    trainer.fit(module)
    assert seen["decreases"] >= 1
    assert sum(s.skipped_steps for s in recorder.snapshots) == seen["decreases"]
    assert all(not s.nonfinite for s in recorder.snapshots)
    assert not [a for a in callback.monitor.alerts if a.kind in BAD_KINDS]

"""TorchHealthCallback with a real Lightning Trainer.fit on CPU."""

from __future__ import annotations

import os

import pytest
import torch

pl = pytest.importorskip("lightning.pytorch")

from torchhealth.integrations.lightning import TorchHealthCallback  # noqa: E402
from torchhealth.report import load_run  # noqa: E402

from tests.helpers import SnapshotRecorder, TinyBody, scalar_tags  # noqa: E402


class TinyModule(TinyBody, pl.LightningModule):
    pass


def trainer(tmp_path, callback, **kwargs):
    defaults = dict(accelerator="cpu", devices=1, max_steps=6, enable_progress_bar=False,
                    enable_model_summary=False, default_root_dir=str(tmp_path),
                    logger=pl.loggers.TensorBoardLogger(str(tmp_path), name="tb"), enable_checkpointing=False)
    defaults.update(kwargs)
    return pl.Trainer(callbacks=[callback], **defaults)


def test_fit_logs_into_the_tensorboard_logger_run_once_per_optimizer_step(tmp_path):
    callback = TorchHealthCallback(check_every=1, log_every=1)
    module = TinyModule()
    t = trainer(tmp_path, callback, accumulate_grad_batches=2)
    t.fit(module)
    check_fit(callback, module, t)


def test_the_older_pytorch_lightning_package(tmp_path):
    old = pytest.importorskip("pytorch_lightning")
    from torchhealth.integrations.pytorch_lightning import TorchHealthCallback as OldCallback

    class OldTinyModule(TinyBody, old.LightningModule):
        pass

    callback = OldCallback(check_every=1, log_every=1)
    module = OldTinyModule()
    t = old.Trainer(callbacks=[callback], accelerator="cpu", devices=1, max_steps=6, enable_progress_bar=False,
                    enable_model_summary=False, default_root_dir=str(tmp_path), accumulate_grad_batches=2,
                    logger=old.loggers.TensorBoardLogger(str(tmp_path), name="tb"), enable_checkpointing=False)
    t.fit(module)
    check_fit(callback, module, t)


def check_fit(callback, module, t):
    monitor = callback.monitor
    assert monitor.step_count == t.global_step == 6  # 12 micro-batches, 6 optimizer steps
    assert monitor.log_dir == t.logger.log_dir
    tags = scalar_tags(t.logger.log_dir)
    assert {"health/grad_norm/net.0", "health/grad_norm/net.2", "health/loss", "health/update_ratio/net.0"} <= tags
    # `torchhealth report` reads the health back from the run it shares with Lightning's own scalars.
    report = load_run(t.logger.log_dir)
    assert report.last_step == 5 and {"net.0", "net.2", "total"} <= set(report.layers)
    # Teardown removed every hook the monitor put on the model.
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in module.modules())
    assert monitor.closed


def test_validation_loss_reaches_the_monitor(tmp_path):
    callback = TorchHealthCallback(check_every=1, log_every=1)
    recorder, module = SnapshotRecorder(), TinyModule()
    module.on_fit_start = lambda: callback.monitor.sinks.append(recorder)
    trainer(tmp_path, callback, max_steps=6, val_check_interval=2, num_sanity_val_steps=1).fit(
        module, val_dataloaders=module.train_dataloader())
    val = [s.val_loss for s in recorder.snapshots if s.val_loss is not None]
    # Validation ran after optimizer steps 2, 4 and 6 (the sanity check is not reported); each value
    # lands in the next check's snapshot, and training ends before a check follows the last one.
    assert len(val) == 2
    assert all(v > 0 for v in val)


def test_own_log_dir_without_a_tensorboard_logger(tmp_path):
    callback = TorchHealthCallback(log_dir=tmp_path / "health", check_every=2, log_every=2)
    trainer(tmp_path, callback, logger=False, max_steps=4).fit(TinyModule())
    assert "health/grad_norm/net.0" in scalar_tags(str(tmp_path / "health"))


def test_stop_on_critical_alert(tmp_path):
    callback = TorchHealthCallback(check_every=1, log_every=1, stop_on_critical=True, on_alert=[lambda a: None])
    t = trainer(tmp_path, callback, max_steps=50)
    t.fit(TinyModule(poison_after=3))
    assert any(a.severity == "critical" and a.kind == "nonfinite" for a in callback.monitor.alerts)
    assert t.global_step < 10  # stopped soon after the loss went NaN, not at max_steps
    assert os.path.exists(os.path.join(t.logger.log_dir, "alerts.jsonl"))


def test_state_is_kept_in_checkpoints(tmp_path):
    first = TorchHealthCallback(check_every=2, log_every=2)
    t = trainer(tmp_path, first, max_steps=4, enable_checkpointing=True)
    t.fit(TinyModule())
    ckpt = tmp_path / "resume.ckpt"
    t.save_checkpoint(str(ckpt))
    assert torch.load(str(ckpt), weights_only=False)["callbacks"]  # the callback's state is in it

    second = TorchHealthCallback(check_every=2, log_every=2)
    t2 = trainer(tmp_path, second, max_steps=8)
    t2.fit(TinyModule(), ckpt_path=str(ckpt))
    assert second.monitor.step_count == 8  # continued from 4, not restarted at 0


def test_bad_option_fails_at_construction():
    with pytest.raises(TypeError, match="check_evry"):
        TorchHealthCallback(check_evry=3)



def test_16_mixed_precision_reads_unscaled_gradients_and_counts_skips(tmp_path):
    from lightning.pytorch.plugins.precision import MixedPrecision

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 6)  # low: no real fp16 overflow
    callback = TorchHealthCallback(check_every=1, log_every=1)
    recorder = SnapshotRecorder()
    module = TinyModule()
    unscaled_norms = []

    def on_fit_start():
        callback.monitor.sinks.append(recorder)

    backward_calls = []

    def on_after_backward():
        backward_calls.append(1)
        if len(backward_calls) == 3:  # an fp16 overflow, as the scaler sees it
            module.net[0].weight.grad[0, 0] = float("inf")

    def on_before_optimizer_step(optimizer):  # runs after the callback's hook, on the same gradients
        grads = torch.cat([p.grad.flatten() for p in module.parameters()])
        if torch.isfinite(grads).all():
            unscaled_norms.append(grads.norm().item())

    module.on_fit_start, module.on_after_backward = on_fit_start, on_after_backward
    module.on_before_optimizer_step = on_before_optimizer_step
    t = trainer(tmp_path, callback, max_steps=5, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    t.fit(module)
    snapshots = recorder.snapshots
    assert sum(s.skipped_steps for s in snapshots) == 1
    assert all(not s.nonfinite for s in snapshots)  # the skipped step's inf was not read as a failure
    norms = [s.family("grad_norm")["total"] for s in snapshots]
    assert norms == pytest.approx(unscaled_norms, rel=1e-4)  # scaled gradients would be 64x larger

"""TorchHealthCallback with a real Hugging Face Trainer.train() on a tiny random model (no downloads)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

transformers = pytest.importorskip("transformers")

from torchhealth.integrations.transformers import TorchHealthCallback  # noqa: E402

from tests.helpers import scalar_tags  # noqa: E402


def tiny_model():
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    return transformers.GPT2LMHeadModel(config)


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int = 64) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 32, (n, 12), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def train(tmp_path, callback, extra_callbacks=(), **kwargs):
    defaults = dict(output_dir=str(tmp_path / "out"), max_steps=6, per_device_train_batch_size=4,
                    gradient_accumulation_steps=2, learning_rate=1e-3, report_to="none", save_strategy="no",
                    disable_tqdm=True, use_cpu=True, logging_steps=100)
    defaults.update(kwargs)
    args = transformers.TrainingArguments(**defaults)
    trainer = transformers.Trainer(model=tiny_model(), args=args, train_dataset=Tokens(), eval_dataset=Tokens(16),
                                   callbacks=[callback, *extra_callbacks])
    trainer.train()
    return trainer


def test_train_reads_gradients_once_per_optimizer_step_and_logs_to_tensorboard(tmp_path):
    callback = TorchHealthCallback(check_every=1, log_every=1)
    trainer = train(tmp_path, callback)
    monitor = callback.monitor
    assert monitor.step_count == trainer.state.global_step == 6  # 12 micro-batches
    assert monitor.log_dir == str(tmp_path / "out" / "runs" / "torchhealth")
    tags = scalar_tags(monitor.log_dir)
    assert "health/grad_norm/transformer.h.0.mlp.c_fc" in tags
    assert "health/loss" in tags and "health/grad_norm/total" in tags
    assert monitor.closed
    assert all(not m._forward_hooks for m in trainer.model.modules())


def test_eval_loss_is_reported_as_validation_loss(tmp_path):
    callback = TorchHealthCallback(check_every=1, log_every=1)
    train(tmp_path, callback, eval_strategy="steps", eval_steps=2, per_device_eval_batch_size=16)
    tags = scalar_tags(callback.monitor.log_dir)
    assert "health/val_loss" in tags


class PoisonWeights(transformers.TrainerCallback):
    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == 2:
            with torch.no_grad():
                model.lm_head.weight.fill_(float("nan"))


def test_stop_on_critical_alert(tmp_path):
    callback = TorchHealthCallback(check_every=1, log_every=1, stop_on_critical=True, on_alert=[lambda a: None])
    trainer = train(tmp_path, callback, extra_callbacks=[PoisonWeights()], max_steps=40)
    assert any(a.severity == "critical" and a.kind == "nonfinite" for a in callback.monitor.alerts)
    assert trainer.state.global_step < 10
    assert os.path.exists(tmp_path / "out" / "runs" / "torchhealth" / "alerts.jsonl")

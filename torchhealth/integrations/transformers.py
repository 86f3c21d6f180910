"""Hugging Face ``Trainer`` callback: ``Trainer(..., callbacks=[TorchHealthCallback()])``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

try:
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError("torchhealth.integrations.transformers needs transformers: "
                      "pip install 'torchhealth[transformers]'") from exc
if not hasattr(TrainerCallback, "on_pre_optimizer_step"):  # added in transformers 4.42
    import transformers

    raise ImportError(f"torchhealth.integrations.transformers needs transformers>=4.42 (for on_pre_optimizer_step), "
                      f"found {transformers.__version__}: pip install -U 'torchhealth[transformers]'")

from torchhealth.amp import unscale_and_check
from torchhealth.monitor import Monitor

DEFAULT_SUBDIR = os.path.join("runs", "torchhealth")
"""Where runs go under ``args.output_dir`` when ``args`` has no ``logging_dir`` (transformers >= 5)."""


class TorchHealthCallback(TrainerCallback):
    """Watches a ``transformers.Trainer``'s training health.

    Gradients are read in ``on_pre_optimizer_step``: once per optimizer step (after gradient
    accumulation and clipping), unscaled under fp16 AMP; steps the GradScaler skips are counted in
    ``Snapshot.skipped_steps``. The training loss is the ``loss`` the model returns in training mode;
    ``eval_loss`` from each evaluation is reported as validation loss (enabling the overfitting check).
    Health scalars go to TensorBoard under ``args.logging_dir`` (transformers 4) or
    ``<output_dir>/runs/torchhealth``, next to the Trainer's own TensorBoard runs; only the main
    process writes files.

    Args:
        log_dir: Run directory overriding the default above.
        stop_on_critical: Set ``control.should_training_stop`` when a critical alert is raised.
        **options: ``MonitorOptions`` (``check_every``, ``on_alert``, ``webhook_url``, ...).

    Attributes:
        monitor: The Monitor of the current ``train()``, or None before it.
    """

    def __init__(self, log_dir: str | os.PathLike | None = None, *, stop_on_critical: bool = False,
                 **options: Any) -> None:
        from torchhealth.options import MonitorOptions

        MonitorOptions.from_kwargs(**options)  # bad options fail here, not in train()
        self.log_dir = log_dir
        self.stop_on_critical = stop_on_critical
        self.options = options
        self.monitor: Monitor | None = None
        self._loss_hook = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: torch.nn.Module | None = None,
                       optimizer: Any = None, **kwargs: Any) -> None:
        if model is None:
            return
        log_dir = self._run_dir(args) if state.is_world_process_zero else None
        self.monitor = Monitor(model, _inner(optimizer), log_dir=log_dir, **self.options)
        if state.global_step:  # resumed from a checkpoint: keep counting optimizer steps from there
            self.monitor.start_at(state.global_step)
        self._loss_hook = model.register_forward_hook(self.monitor.guard.wrap("loss hook", self._record_loss))

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        if self.monitor is None or self.monitor.closed:
            return
        scaler = getattr(optimizer, "scaler", None)  # accelerate's AcceleratedOptimizer under fp16
        if self.monitor.guard.call("amp", unscale_and_check, scaler, _inner(optimizer), default=False):
            self.monitor.record_skipped_step()
            return
        alerts = self.monitor.step()
        if self.stop_on_critical and any(a.severity == "critical" for a in alerts):
            control.should_training_stop = True

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None,
                    **kwargs: Any) -> None:
        if self.monitor is not None and not self.monitor.closed and metrics and "eval_loss" in metrics:
            self.monitor.log_validation(metrics["eval_loss"])

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.close()

    def close(self) -> None:
        """Removes every hook and closes the monitor's writers (done at the end of training)."""
        if self._loss_hook is not None:
            self._loss_hook.remove()
            self._loss_hook = None
        if self.monitor is not None:
            self.monitor.close()

    def _record_loss(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        if not module.training:
            return
        loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
        if isinstance(loss, torch.Tensor):
            self.monitor.log_loss(loss)

    def _run_dir(self, args: Any) -> str:
        if self.log_dir is not None:
            return os.fspath(self.log_dir)
        return getattr(args, "logging_dir", None) or os.path.join(args.output_dir, DEFAULT_SUBDIR)


def _inner(optimizer: Any) -> Any:
    """The torch optimizer inside accelerate's AcceleratedOptimizer (or the optimizer itself)."""
    inner = getattr(optimizer, "optimizer", optimizer)
    return inner if isinstance(inner, torch.optim.Optimizer) else None

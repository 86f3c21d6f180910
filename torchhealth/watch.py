"""``torchhealth.watch``: attach to an existing loop through the optimizer, no ``monitor.step`` call."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from torchhealth.amp import ScalerStepWatch, check_scaler
from torchhealth.monitor import Monitor


class OptimizerDriver:
    """Steps a Monitor from an optimizer's step pre-hook, once per ``optimizer.step()``.

    The pre-hook runs after backward (and after gradient accumulation, which calls
    ``optimizer.step()`` once per accumulated batch) and before the weights change, the point where
    ``Monitor.step`` belongs. Inside ``GradScaler.step`` it runs after ``unscale_``, so it reads
    unscaled gradients; steps the scaler skips never call ``optimizer.step()`` and are counted
    through ``ScalerStepWatch`` instead.

    Args:
        monitor: The monitor to step.
        optimizer: The optimizer whose steps drive it.
        scaler: The loop's GradScaler, if any, to count the steps it skips.
    """

    def __init__(self, monitor: Monitor, optimizer: torch.optim.Optimizer, scaler: Any = None) -> None:
        self.monitor = monitor
        self._handle = optimizer.register_step_pre_hook(self._before_step)
        self._scaler_watch = (ScalerStepWatch(scaler, optimizer, monitor.guard.wrap("amp", monitor.record_skipped_step))
                              if scaler is not None else None)

    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self.monitor.closed:
            self.close()
            return
        self.monitor.step()

    def close(self) -> None:
        """Removes the optimizer hook and restores the scaler. Safe to call twice."""
        self._handle.remove()
        if self._scaler_watch is not None:
            self._scaler_watch.close()


def watch(model: nn.Module, optimizer: torch.optim.Optimizer, *, log_dir: str | os.PathLike | None = None,
          scaler: Any = None, **options: Any) -> Monitor:
    """Watches ``model``'s training health with no change to the loop but this call.

    Statistics are taken once per ``optimizer.step()`` (so once per accumulated batch with gradient
    accumulation). The training loss is optional: ``monitor.log_loss(loss)`` before
    ``optimizer.step()``. With AMP, pass the GradScaler so the steps it skips are counted in
    ``Snapshot.skipped_steps`` (gradients are read unscaled either way); bf16 autocast needs nothing.

    Args:
        model: The module to watch.
        optimizer: Its optimizer; each of its steps is one monitor step.
        log_dir: TensorBoard / ``alerts.jsonl`` directory, or None for no files.
        scaler: The loop's ``torch.amp.GradScaler``, if it uses one.
        **options: ``MonitorOptions`` (``check_every``, ``on_alert``, ``webhook_url``, ...).

    Returns:
        The Monitor; ``monitor.close()`` (or ``with``) detaches it from the model and optimizer.

    Example:
        >>> monitor = torchhealth.watch(model, opt, log_dir="runs/exp1")
        >>> for x, y in data:
        ...     loss = loss_fn(model(x), y); loss.backward()
        ...     monitor.log_loss(loss); opt.step(); opt.zero_grad()
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"watch() needs the torch.optim.Optimizer whose steps drive the monitor, "
                        f"got {type(optimizer).__name__}; for a loop without one use Monitor(...).step()")
    if scaler is not None:
        check_scaler(scaler)  # before the monitor attaches anything
    monitor = Monitor(model, optimizer, log_dir=log_dir, **options)
    monitor.attach(OptimizerDriver(monitor, optimizer, scaler))
    return monitor

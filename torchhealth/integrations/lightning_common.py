"""The Lightning callback's logic, shared by the ``lightning.pytorch`` and ``pytorch_lightning`` classes.

Lightning checks ``isinstance(callback, Callback)`` against the package the Trainer comes from, so
each package needs its own class; both are this logic plus that package's ``Callback``.
"""

from __future__ import annotations

import os
from typing import Any

from torchhealth.amp import unscale_and_check
from torchhealth.monitor import Monitor

DEFAULT_SUBDIR = "torchhealth"
"""Where runs go under ``trainer.default_root_dir`` when the trainer has no TensorBoard logger."""


class LightningHealthLogic:
    """Watches a LightningModule's training health.

    Gradients are read in ``on_before_optimizer_step``: once per optimizer step (after gradient
    accumulation) and, with 16-bit AMP, after Lightning unscaled them; steps the GradScaler skips are
    counted in ``Snapshot.skipped_steps``. Health scalars go into the trainer's TensorBoard logger's
    run directory when it has one, else ``log_dir``; only global rank zero writes files.

    Args:
        log_dir: Run directory when the trainer has no TensorBoardLogger
            (default ``<default_root_dir>/torchhealth``).
        stop_on_critical: Set ``trainer.should_stop`` when a critical alert is raised.
        val_loss_key: The logged metric (``self.log(...)``) reported to the monitor as validation loss
            after each validation run, which enables the overfitting check.
        **options: ``MonitorOptions`` (``check_every``, ``on_alert``, ``webhook_url``, ...).

    Attributes:
        monitor: The Monitor of the current fit, or None outside one.
    """

    def __init__(self, log_dir: str | os.PathLike | None = None, *, stop_on_critical: bool = False,
                 val_loss_key: str = "val_loss", **options: Any) -> None:
        from torchhealth.options import MonitorOptions

        MonitorOptions.from_kwargs(**options)  # bad options fail here, not at fit time
        self.log_dir = log_dir
        self.stop_on_critical = stop_on_critical
        self.val_loss_key = val_loss_key
        self.options = options
        self.monitor: Monitor | None = None
        self._optimizer = None
        self._pending_state: dict[str, Any] | None = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self._optimizer = trainer.optimizers[0] if trainer.optimizers else None
        log_dir = self._run_dir(trainer) if trainer.is_global_zero else None
        self.monitor = Monitor(pl_module, self._optimizer, log_dir=log_dir, **self.options)
        if self._pending_state is not None:
            self._restore(self._pending_state)

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: Any) -> None:
        if self.monitor is not None:
            # Automatic optimization divides the loss by accumulate_grad_batches before backward.
            scale = trainer.accumulate_grad_batches if pl_module.automatic_optimization else 1
            self.monitor.log_loss(loss.detach() * scale)

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if self.monitor is None or optimizer is not self._optimizer:
            return
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if self.monitor.guard.call("amp", unscale_and_check, scaler, optimizer, default=False):
            self.monitor.record_skipped_step()
            return
        alerts = self.monitor.step()
        if self.stop_on_critical and any(a.severity == "critical" for a in alerts):
            trainer.should_stop = True

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        value = trainer.callback_metrics.get(self.val_loss_key)
        if self.monitor is not None and value is not None and not trainer.sanity_checking:
            self.monitor.log_validation(value)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self.close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.close()

    def close(self) -> None:
        """Removes the monitor's hooks and closes its writers (done at teardown)."""
        if self.monitor is not None:
            self.monitor.close()

    def state_dict(self) -> dict[str, Any]:
        if self.monitor is None:
            return dict(self._pending_state or {})
        return {"monitor": self.monitor.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning restores callbacks before on_fit_start builds the monitor.
        self._pending_state = dict(state_dict)
        if self.monitor is not None and not self.monitor.closed:
            self._restore(self._pending_state)

    def _restore(self, state: dict[str, Any]) -> None:
        if "monitor" in state:
            self.monitor.load_state_dict(state["monitor"])
        self._pending_state = None

    def _run_dir(self, trainer: Any) -> str:
        for logger in trainer.loggers:
            if type(logger).__name__ == "TensorBoardLogger":  # the same class in both Lightning packages
                return logger.log_dir
        return os.fspath(self.log_dir) if self.log_dir is not None else os.path.join(trainer.default_root_dir, DEFAULT_SUBDIR)

"""Training and validation loss, accumulated on the device every step."""

from __future__ import annotations

import math

import torch

from torchhealth.collectors.base import NONFINITE, Collector, State, StepFlags, Summary
from torchhealth.snapshot import Snapshot


class LossCollector(Collector):
    """Mean finite loss per check interval, plus the step where the loss first went non-finite.

    Recording a loss is one in-place add into a per-step vector on the device (no host sync);
    the mean and the non-finite flags are computed from that vector on check steps.
    """

    def __init__(self, device: torch.device, interval: int) -> None:
        self.device = device
        self.losses = StepFlags(interval, device)  # each step's loss at its offset in the interval
        self._val = torch.zeros(2, device=device)  # [sum of validation losses, count]
        self._recorded = 0  # losses recorded this interval (known on the host without a sync)
        self._val_recorded = False

    def record(self, loss: torch.Tensor | float, offset: int) -> None:
        """Adds one step's training loss; ``offset`` is the step's position in the check interval."""
        if 0 <= offset < self.losses.flags.numel():
            self.losses.mark(offset, self._as_scalar(loss))
            self._recorded += 1

    def record_validation(self, loss: torch.Tensor | float) -> None:
        """Adds one validation loss (averaged with others reported in the same interval)."""
        value = self._as_scalar(loss)
        self._val.add_(torch.stack([value, torch.ones_like(value)]))
        self._val_recorded = True

    def _as_scalar(self, loss: torch.Tensor | float) -> torch.Tensor:
        if isinstance(loss, torch.Tensor):
            value = loss.detach()
            value = value.float().mean() if value.numel() != 1 else value.float().reshape(())
            return value.to(self.device, non_blocking=True)
        if isinstance(loss, (int, float)) and not isinstance(loss, bool):
            return torch.full((), float(loss), device=self.device)  # a fill: no host-to-device copy
        raise TypeError(f"loss must be a tensor or a number, got {type(loss).__name__}")

    def state(self) -> State:
        state: State = {}
        if self._recorded:
            values = self.losses.flags
            bad = self.losses.bad()
            finite_sum = torch.where(bad > 0, 0.0, values).sum()
            state.update(loss=(torch.stack([finite_sum, self._recorded - bad.sum()]), "sum"), loss_flags=(bad, "sum"))
        if self._val_recorded:
            state["val_loss"] = (self._val, "sum")
        return state

    def summarize(self, state: dict[str, torch.Tensor]) -> Summary:
        out: Summary = []
        if "loss" in state:
            total, count = state["loss"]
            out.append(("loss", ["loss"], (total / count).reshape(1)))
            out.append((NONFINITE, ["loss"], StepFlags.first(state["loss_flags"]).reshape(1)))
        if "val_loss" in state:
            total, count = state["val_loss"]
            out.append(("loss", ["val_loss"], (total / count).reshape(1)))
        return out

    def finish(self, values, snapshot: Snapshot, interval_start: int) -> None:
        loss = values.pop(("loss", "loss"), None)
        val = values.pop(("loss", "val_loss"), None)
        snapshot.loss = loss if loss is not None and math.isfinite(loss) else None
        snapshot.val_loss = val
        super().finish(values, snapshot, interval_start)

    def reset_interval(self) -> None:
        self._val.zero_()
        self.losses.reset()
        self._recorded = 0
        self._val_recorded = False

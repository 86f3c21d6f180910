"""Training and validation loss, accumulated on the device every step."""

from __future__ import annotations

import math
import numbers

import torch

from torchhealth.collectors.base import NONFINITE, Collector, State, StepFlags, Summary
from torchhealth.snapshot import Snapshot

_COUNT = "_loss_count"
"""Private family: how many losses (all ranks) are behind a reported mean."""


class LossCollector(Collector):
    """Mean finite loss per check interval, plus the step where the loss first went non-finite.

    Recording a loss launches a few tiny kernels and never synchronizes with the host.
    """

    def __init__(self, device: torch.device, interval: int) -> None:
        self.device = device
        self.flags = StepFlags(interval, device)
        self._sum = torch.zeros(2, device=device)  # [sum of finite losses, count of finite losses]
        self._val = torch.zeros(2, device=device)  # [sum of validation losses, count]

    def record(self, loss: torch.Tensor | float, offset: int) -> None:
        """Adds one step's training loss; ``offset`` is the step's position in the check interval."""
        value = self._as_scalar(loss)
        self._follow(value.device)
        finite = torch.isfinite(value)
        self._sum.add_(torch.stack([torch.where(finite, value, 0.0), finite.float()]))
        self.flags.mark(offset, ~finite)

    def record_validation(self, loss: torch.Tensor | float) -> None:
        """Adds one validation loss (averaged with others reported in the same interval)."""
        value = self._as_scalar(loss)
        self._follow(value.device)
        self._val.add_(torch.stack([value, torch.ones_like(value)]))

    def _as_scalar(self, loss: torch.Tensor | float) -> torch.Tensor:
        if isinstance(loss, torch.Tensor):
            value = loss.detach()
            return value.float().mean() if value.numel() != 1 else value.float().reshape(())
        if isinstance(loss, numbers.Real) and not isinstance(loss, bool):  # numbers.Real: numpy scalars too
            return torch.tensor(float(loss), device=self._sum.device)
        raise TypeError(f"loss must be a tensor or a number, got {type(loss).__name__}")

    def _follow(self, device: torch.device) -> None:
        """Moves the running state to where losses arrive (a model moved after attaching), once."""
        if device != self._sum.device:
            self.device = device
            with torch.inference_mode(False):  # stays updatable outside an inference_mode() block
                self._sum, self._val = self._sum.to(device), self._val.to(device)
                self.flags.flags = self.flags.flags.to(device)

    def state(self) -> State:
        # Always the same layout, recorded or not: a rank that saw no loss still joins the reduction,
        # and the counts it adds (zero) say whether any rank recorded one.
        return {"loss": (self._sum, "sum"), "loss_flags": (self.flags.flags, "sum"), "val_loss": (self._val, "sum")}

    def summarize(self, state: dict[str, torch.Tensor]) -> Summary:
        (total, count), (val_total, val_count) = state["loss"], state["val_loss"]
        return [
            ("loss", ["loss"], (total / count).reshape(1)),
            (_COUNT, ["loss"], count.reshape(1)),
            (NONFINITE, ["loss"], StepFlags.first(state["loss_flags"]).reshape(1)),
            ("loss", ["val_loss"], (val_total / val_count).reshape(1)),
            (_COUNT, ["val_loss"], val_count.reshape(1)),
        ]

    def finish(self, values, snapshot: Snapshot, interval_start: int) -> None:
        loss = values.pop(("loss", "loss"))
        val = values.pop(("loss", "val_loss"))
        snapshot.loss = loss if values.pop((_COUNT, "loss")) > 0 and math.isfinite(loss) else None
        snapshot.val_loss = val if values.pop((_COUNT, "val_loss")) > 0 else None
        super().finish(values, snapshot, interval_start)

    def reset_interval(self) -> None:
        self._sum.zero_()
        self._val.zero_()
        self.flags.reset()

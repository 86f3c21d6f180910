"""Training and validation loss per check interval, and the step where the loss went non-finite."""

from __future__ import annotations

import math
import numbers

import torch

from torchhealth.collectors.base import NONFINITE, Collector, State, StepFlags, Summary, host_vector
from torchhealth.collectors.tripwire import LossTripwire
from torchhealth.snapshot import Snapshot

FLOAT32_MAX = torch.finfo(torch.float32).max
_COUNT = "_loss_count"
"""Private family: how many losses (all ranks) are behind a reported mean."""


class LossCollector(Collector):
    """Mean finite loss per check interval, plus the step where the loss first went non-finite.

    Recording a loss is one in-place add into a per-step vector on the device (no host sync);
    the mean and the non-finite flags are computed from that vector on check steps.
    """

    def __init__(self, device: torch.device, interval: int, tripwire: bool = True) -> None:
        self.device = device
        self.tripwire = LossTripwire(device) if tripwire else None
        with torch.inference_mode(False):  # stays updatable if the monitor is built inside inference_mode()
            self.losses = StepFlags(interval, device)  # each step's loss (micro-batches summed) at its offset
            self._val = torch.zeros(2, device=device)  # [sum of validation losses, count]
        self._counts = [0] * interval  # losses recorded at each offset (known on the host without a sync)

    def record(self, loss: torch.Tensor | float, offset: int) -> None:
        """Adds one step's training loss; ``offset`` is the step's position in the check interval."""
        if not 0 <= offset < len(self._counts):
            return
        value = self._as_scalar(loss)
        self._follow(value.device)
        self.losses.mark(offset, value)
        self._counts[offset] += 1
        if self.tripwire is not None:
            self.tripwire.record(value)

    def tripped(self) -> bool:
        """Whether the trip-wire asks for an early check (see collectors/tripwire.py)."""
        return self.tripwire is not None and self.tripwire.tripped()

    def record_validation(self, loss: torch.Tensor | float) -> None:
        """Adds one validation loss (averaged with others reported in the same interval)."""
        # the value goes where the state is: a CPU validation loss must not pull the state off the GPU
        value = self._as_scalar(loss).to(self._val.device, non_blocking=True)
        self._val.add_(torch.stack([value, torch.ones_like(value)]))

    def _as_scalar(self, loss: torch.Tensor | float) -> torch.Tensor:
        if isinstance(loss, torch.Tensor):
            value = loss.detach()
            return value.float().mean() if value.numel() != 1 else value.float().reshape(())
        if isinstance(loss, numbers.Real) and not isinstance(loss, bool):  # numbers.Real: numpy scalars too
            value = float(loss)
            if abs(value) <= FLOAT32_MAX or not math.isfinite(value):
                return torch.full((), value, device=self._val.device)  # a fill: no host-to-device copy
            return torch.tensor(value, device=self._val.device)  # full() refuses it; this rounds to max or inf
        raise TypeError(f"loss must be a tensor or a number, got {type(loss).__name__}")

    def _follow(self, device: torch.device) -> None:
        """Moves the running state to where losses arrive (a model moved after attaching), once."""
        if device != self._val.device:
            self.device = device
            with torch.inference_mode(False):  # stays updatable outside an inference_mode() block
                self._val = self._val.to(device)
                self.losses.to(device)

    def state(self) -> State:
        # Always the same layout, recorded or not: a rank that saw no loss still joins the reduction,
        # and the counts it adds (zero) say whether any rank recorded one.
        values, bad = self.losses.flags, self.losses.bad()
        counts = host_vector(self._counts, values.device)
        finite = torch.stack([torch.where(bad > 0, 0.0, values).sum(), (counts * (1 - bad)).sum()])
        return {"loss": (finite, "sum"), "loss_flags": (bad, "sum"), "val_loss": (self._val, "sum")}

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
        self._val.zero_()
        self.losses.reset()
        self._counts = [0] * len(self._counts)

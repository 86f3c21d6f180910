"""Training and validation loss per check interval, and the step where the loss went non-finite."""

from __future__ import annotations

import math
import numbers

import torch

from torchhealth.collectors.base import IDLE, Arrays, AttachContext, Collector, State, StepFlags, host_values
from torchhealth.collectors.tripwire import FLOAT32_MAX, LossTripwire
from torchhealth.records import Snapshot


class LossCollector(Collector):
    """Mean finite loss per check interval, plus the step where the loss first went non-finite.

    Recording a loss is one in-place add into the step's slot of a per-step device vector: the
    value is captured at once (a training loop may change the loss tensor in place afterwards, as
    the Hugging Face Trainer's ``loss *= ...`` does). On the CPU the usual loss (a 0-d float32
    tensor) is read with ``tolist()`` and added in the slot's memory, with no ATen operation at all.
    ``end_step`` hands the step's slot to the trip-wire: from a GPU its copy to the host is the
    only other per-step device work; on the CPU the trip-wire reads the slot's memory directly.
    A quiet step on a GPU (``record_quiet_step``) skips the add: its loss is copied straight into
    the trip-wire's host slot, and the check's ``finish`` reads it from there (by then the copy has
    landed: it was queued before the check's own copy, which ``finish`` has waited for, on the
    current CUDA stream, which the trip-wire's event assumes too).

    Args:
        device: Where the losses are kept; with ``interval``, builds the state now (else at ``attach``).
        interval: Steps per check interval.
        tripwire: Whether a loss spike asks for an early check (not under torch.distributed, where
            every rank must check at the same steps); at ``attach``, when None, without a process group.
    """

    name = "loss"
    records_quiet_steps = True

    def __init__(self, device: torch.device | None = None, interval: int | None = None,
                 tripwire: bool | None = None) -> None:
        self._tripwire_wanted = tripwire
        if device is not None and interval is not None:
            self._build(device, interval, True if tripwire is None else tripwire)

    def attach(self, context: AttachContext) -> bool:
        if not hasattr(self, "losses"):
            # The trip-wire decides on one rank's loss; under torch.distributed every rank must check
            # at the same steps (a check is a collective), so there checks follow the schedule alone.
            tripwire = context.world_size == 1 if self._tripwire_wanted is None else self._tripwire_wanted
            self._build(context.device, context.options.check_every, tripwire)
        return True

    def _build(self, device: torch.device, interval: int, tripwire: bool) -> None:
        self.tripwire = LossTripwire(interval, device) if tripwire else None
        with torch.inference_mode(False):  # stays updatable if the monitor is built inside inference_mode()
            self.losses = StepFlags(interval, device)  # each step's loss (micro-batches summed) at its offset
            self._val = torch.zeros(2, device=device)  # [sum of validation losses, count]
        self.device = self._val.device  # with its index: losses from elsewhere move the state (``_follow``)
        self._device_index = self._val.get_device()  # compared per step: cheaper than building a torch.device
        self._host_losses = self._host_view()
        self._copies_quietly = self._quiet_copies()
        self._counts = [0] * interval  # losses recorded at each offset (known on the host without a sync)
        self._quiet: list[int] = []  # offsets whose loss is only in the trip-wire's host slots (quiet GPU steps)
        self._read_quiet: list[int] = []  # those of the interval that the last ``state()`` read

    def record(self, loss: torch.Tensor | float, offset: int) -> None:
        """Adds one training loss (of a step or a micro-batch); ``offset`` is the step's place in the interval."""
        if not 0 <= offset < len(self._counts):
            return
        if self._host_losses is not None:
            number = host_number(loss)
            if number is not None:  # the usual loss on the CPU: added in the slot's memory, no ATen op
                _add_float32(self._host_losses, offset, number)
                self._counts[offset] += 1
                return
        value = self._as_scalar(loss)
        if value.get_device() != self._device_index:
            self._follow(value.device)
        self.losses.mark(offset, value)
        self._counts[offset] += 1

    def idle_steps(self, step: int) -> int:
        return IDLE if self.records_quietly else 0

    def quiet_step(self, loss: torch.Tensor | float | None, offset: int) -> bool:
        return self.record_quiet_step(loss, offset)

    def on_loss(self, loss: torch.Tensor | float, offset: int) -> None:
        self.record(loss, offset)

    def on_validation_loss(self, loss: torch.Tensor | float) -> None:
        self.record_validation(loss)

    @property
    def records_quietly(self) -> bool:
        """Whether ``record_quiet_step`` can record: the per-step losses live in host memory
        (training on the CPU), or a trip-wire copies each step's loss to the host anyway."""
        return self._host_losses is not None or self._copies_quietly

    def record_quiet_step(self, loss: torch.Tensor | float | None, offset: int) -> bool:
        """Records a step that has nothing else to do, in as few operations as possible.

        Only the usual loss (or none: ``log_loss`` may have recorded it) of a step whose trip-wire
        has not tripped since the previous step. On the CPU it is added in the slot's memory and
        handed to the trip-wire; on a GPU the trip-wire's copy to the host is the only launch.
        Anything else returns False having recorded nothing, and the step takes ``on_step``.
        """
        slots, tripwire = self._host_losses, self.tripwire
        if (tripwire is not None and tripwire.pending()) or not 0 <= offset < len(self._counts):
            return False
        if loss is None:  # log_loss may have recorded one: closed as any step
            self.end_step(offset)
            return True
        if slots is None:
            return self._copy_quiet_loss(loss, offset)
        number = host_number(loss)
        if number is None:
            return False
        _add_float32(slots, offset, number)
        self._counts[offset] += 1
        self.end_step(offset)
        return True

    def _copy_quiet_loss(self, loss: torch.Tensor | float, offset: int) -> bool:
        """The loss of a quiet step on a GPU: copied into the trip-wire's host slot, not added on the device."""
        # Only the usual loss, on the collector's device (whose trip-wire buffers ``end_step`` of the
        # step that moved the collector made), at an offset where no micro-batch loss waits to be summed.
        if (self._counts[offset] or not self._copies_quietly or type(loss) is not torch.Tensor
                or loss.dtype is not torch.float32 or loss.dim() != 0 or loss.get_device() != self._device_index):
            return False
        self.tripwire.record(loss.detach(), 1, offset)
        self._counts[offset] = 1
        self._quiet.append(offset)
        return True

    def on_step(self, loss: torch.Tensor | float | None, offset: int) -> bool:
        """One training step: tests the previous steps' losses, records this one's, closes the step.

        Returns:
            Whether the trip-wire asks for an early check (tested before this step's loss is
            recorded: on a GPU its copy to the host is still in flight).
        """
        tripped = self.tripped()
        if loss is not None:
            self.record(loss, offset)
        self.end_step(offset)
        return tripped

    def end_step(self, offset: int) -> None:
        """Closes the step at ``offset``: the trip-wire copies its loss (micro-batches summed) to the host."""
        if self.tripwire is None or not 0 <= offset < len(self._counts) or not self._counts[offset]:
            return
        if self._host_losses is not None:
            self.tripwire.record_value(self._host_losses[offset], self._counts[offset])
        else:
            self.tripwire.record(self.losses.slot(offset), self._counts[offset], offset)

    def _host_view(self) -> memoryview | None:
        """The per-step losses' memory, when they are on the CPU (read and written without a torch call).

        A memoryview: indexing it gives a Python float directly, several times cheaper than a
        numpy scalar on a step whose caches the backward pass has just emptied.
        """
        return memoryview(self.losses.flags.numpy()) if self.losses.flags.device.type == "cpu" else None

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
            if value.dtype is torch.float32 and value.dim() == 0:  # the usual loss: no conversion at all
                return value
            return value.float().mean() if value.numel() != 1 else value.float().reshape(())
        if isinstance(loss, numbers.Real) and not isinstance(loss, bool):  # numbers.Real: numpy scalars too
            value = float(loss)
            if _fits_float32(value):
                return torch.full((), value, device=self._val.device)  # a fill: no host-to-device copy
            return torch.tensor(value, device=self._val.device)  # full() refuses it; this rounds to max or inf
        raise TypeError(f"loss must be a tensor or a number, got {type(loss).__name__}")

    def _follow(self, device: torch.device) -> None:
        """Moves the running state to where losses arrive (a model moved after attaching)."""
        self.device = device
        with torch.inference_mode(False):  # stays updatable outside an inference_mode() block
            self._val = self._val.to(device)
            self.losses.to(device)
        self._device_index = self._val.get_device()
        self._host_losses = self._host_view()
        self._copies_quietly = self._quiet_copies()

    def _quiet_copies(self) -> bool:
        """Whether a quiet step's loss may go to the trip-wire alone: copies from a GPU land in order,
        before a check's own copy (from the CPU at once); other accelerators are not relied on."""
        return self.tripwire is not None and self.device.type in ("cuda", "cpu")

    def state(self) -> State:
        # Always the same layout, recorded or not: a rank that saw no loss still joins the reduction,
        # and the counts it adds (zero) say whether any rank recorded one.
        self._read_quiet, self._quiet = self._quiet, []
        return {"losses": (self.losses.flags, "sum"), "counts": (host_values(self._counts), "sum"),
                "val_loss": (self._val, "sum")}

    def finish(self, state: Arrays, snapshot: Snapshot, interval_start: int) -> None:
        if "losses" not in state:
            return
        # a few numbers per step of one interval: plain Python is faster than numpy calls here
        losses, counts = state["losses"].tolist(), state["counts"].tolist()
        if self._read_quiet:  # quiet GPU steps: their losses are in the trip-wire's host slots only
            copied = self.tripwire.copied_values()
            for offset in self._read_quiet:
                losses[offset] = float(copied[offset])
        finite = [(total, n) for total, n in zip(losses, counts) if n > 0 and math.isfinite(total)]
        if finite:
            snapshot.loss = sum(total for total, _ in finite) / sum(n for _, n in finite)
            if self.tripwire is not None:  # what a normal step's loss is now: the trip-wire's reference
                self.tripwire.set_typical(sum(abs(total / n) for total, n in finite) / len(finite), len(finite))
        bad = next((offset for offset, total in enumerate(losses) if not math.isfinite(total)), None)
        if bad is not None:
            snapshot.nonfinite["loss"] = interval_start + bad
        val_total, val_count = state["val_loss"].tolist()
        if val_count > 0:
            snapshot.val_loss = val_total / val_count

    def reset_interval(self) -> None:
        self._val.zero_()
        self.losses.reset()
        self._counts = [0] * len(self._counts)
        self._quiet = []  # empty after state(); after load_state_dict() it would hold rolled-back steps


def host_number(loss: torch.Tensor | float) -> float | None:
    """The value of a loss that is already in host memory, as a Python float; else None.

    A 0-d float32 CPU tensor (the usual loss) is read with ``tolist()``, which reads its memory
    directly (negative and conjugate bits resolved): on a step whose caches the backward pass has
    just emptied it costs less than any ATen operation, ``item()`` included. Python numbers within
    float32's range count too; anything else (other dtypes, shapes, devices, tensor subclasses,
    tensors without storage) returns None and takes the general path.
    """
    if type(loss) is torch.Tensor:
        if loss.dtype is not torch.float32 or not loss.is_cpu or loss.dim() != 0:
            return None
        try:
            return loss.tolist()
        except RuntimeError:  # no storage (a sparse or opaque tensor)
            return None
    if isinstance(loss, float) and _fits_float32(loss):
        return loss
    return None


def _fits_float32(value: float) -> bool:
    """Whether float32 holds ``value`` without overflow (NaN and +-inf included)."""
    return abs(value) <= FLOAT32_MAX or not math.isfinite(value)


def _add_float32(slots: memoryview, offset: int, value: float) -> None:
    """``slots[offset] += value`` in float32 memory; a sum beyond float32's range becomes +-inf, as on the device."""
    total = slots[offset] + value
    try:
        slots[offset] = total
    except OverflowError:
        slots[offset] = math.copysign(math.inf, total)

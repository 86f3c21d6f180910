"""The collector contract: on-device running state, one batched read per check.

A check works in four phases, the same for every collector:

1. ``state()``: raw device tensors, each with its cross-rank reduction (``"sum"`` or ``"mean"``).
   Everything a collector keeps is additive, so one all-reduce serves all collectors.
2. ``summarize(state)``: device-side arithmetic on the (reduced) state, giving for each family a
   list of layer names and a 1-d tensor of values. The monitor concatenates every collector's
   vectors and starts ONE copy of them to the host.
3. ``reset_interval()``: clears per-interval state, still at the check step (device work queued
   after the summaries, so the next steps' statistics start from zero).
4. ``finish(values, snapshot)``: host side, once the copy has landed (on a GPU at the next step):
   files the values into the snapshot. Pure host code: device state has moved on by then.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch

from torchhealth.snapshot import Snapshot

Key = Tuple[str, str]
State = Dict[str, Tuple[torch.Tensor, str]]
Summary = List[Tuple[str, List[str], torch.Tensor]]
NONFINITE = "_first_nonfinite"
"""Private family: offset of the first non-finite step in the interval (or -1); see StepFlags."""


class Collector:
    """Base class of one statistic family's collector."""

    def state(self) -> State:
        """Returns ``{name: (device tensor, "sum" | "mean")}``: additive raw state to reduce across ranks."""
        return {}

    def summarize(self, state: dict[str, torch.Tensor]) -> Summary:
        """Turns reduced raw state into ``[(family, layer names, 1-d device tensor of values)]``."""
        return []

    def finish(self, values: dict[Key, float], snapshot: Snapshot, interval_start: int) -> None:
        """Files host values into ``snapshot`` (host only: the device state may be a step further).

        Args:
            values: This collector's summarized values, on the host.
            snapshot: The snapshot being built.
            interval_start: First step of the interval this check covers.
        """
        for (family, layer), value in values.items():
            if family == NONFINITE:
                if value >= 0:
                    snapshot.nonfinite[layer] = interval_start + int(value)
            else:
                snapshot.stats.setdefault(family, {})[layer] = value

    def reset_interval(self) -> None:
        """Clears state that covers one check interval (called at the check, after ``summarize``)."""

    def close(self) -> None:
        """Removes hooks and frees state."""


class StepFlags:
    """Per-step non-finite markers over one check interval, kept on the device.

    ``mark`` adds a value at the step's offset in the interval (one in-place add, no test, no host
    sync); an offset is bad when what was added there is NaN/Inf. ``bad()`` turns the markers into
    0/1 flags, so the earliest bad step survives a cross-rank *sum* (no second collective for a min).
    """

    def __init__(self, length: int, device: torch.device) -> None:
        self.flags = torch.zeros(length, device=device)
        self._slots = self.flags.unbind()  # views made once: marking is one add, not an index + add

    def to(self, device: torch.device) -> None:
        """Moves the markers to ``device``."""
        self.flags = self.flags.to(device)
        self._slots = self.flags.unbind()

    def slot(self, offset: int) -> torch.Tensor | None:
        """The 0-d view at ``offset`` (None outside the interval), for batched in-place adds."""
        return self._slots[offset] if 0 <= offset < len(self._slots) else None

    def mark(self, offset: int, value: torch.Tensor) -> None:
        """Adds ``value`` (a 0-d tensor; non-finite marks the step bad) at ``offset``."""
        if 0 <= offset < len(self._slots):
            self._slots[offset].add_(value)

    def bad(self) -> torch.Tensor:
        """1.0 at every offset that saw a non-finite value, else 0.0."""
        return (~torch.isfinite(self.flags)).float()

    @staticmethod
    def first(flags: torch.Tensor) -> torch.Tensor:
        """Offset of the first non-zero flag along the last axis, or -1 where there is none."""
        n = flags.shape[-1]
        offsets = torch.arange(n, device=flags.device, dtype=torch.float32)
        hit = flags > 0
        first = torch.where(hit, offsets, torch.full_like(offsets, float(n))).amin(dim=-1)
        return torch.where(hit.any(dim=-1), first, torch.full_like(first, -1.0))

    def reset(self) -> None:
        """Clears all markers."""
        self.flags.zero_()


def host_vector(values: list[float] | list[int], device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Host numbers as a device vector without a host synchronization.

    ``torch.tensor(values, device="cuda")`` copies from pageable memory and waits for the copy;
    staging through pinned memory (PyTorch caches pinned blocks) lets the copy run asynchronously.
    """
    host = torch.tensor(values, dtype=dtype)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def state_nbytes(*roots: object) -> int:
    """Bytes of the distinct tensor storages held by ``roots`` (torchhealth objects, lists, dicts).

    Parameters, gradients and modules are not followed: training holds them anyway. Used to show
    that monitor state is O(parameters + units) and does not grow with the number of steps.
    """
    seen: set[int] = set()
    storages: dict[int, int] = {}
    stack = list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (torch.nn.Parameter, torch.nn.Module)):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        elif isinstance(obj, dict):
            stack += list(obj.keys()) + list(obj.values())
        elif isinstance(obj, (list, tuple, set)):
            stack += list(obj)
        elif type(obj).__module__.startswith("torchhealth") and hasattr(obj, "__dict__"):
            stack += list(vars(obj).values())
    return sum(storages.values())


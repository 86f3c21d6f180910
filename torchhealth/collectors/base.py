"""The collector contract: on-device running state, one batched read per check, its own schedule.

A collector is attached to a monitor once (``attach``: its hooks, its device, what it reads from
the model), then driven by the monitor, which names none of them and calls each the same way:

- per training step, ``on_step`` before a check and ``after_step`` after it; on steps that a
  collector says need nothing from it (``idle_steps``), only ``quiet_step``, which costs nothing
  unless overridden (the loss collector records the loss there, in a few operations);
- events any collector may use: ``on_loss``/``on_validation_loss`` (losses reported outside
  ``step``), ``on_skipped_step`` (AMP's GradScaler skipped an optimizer step);
- at checks the three phases below, for the collectors whose ``reads`` says so.

A check works in three phases, the same for every collector:

1. ``state()``, at the check: raw tensors, each with its cross-rank reduction (``"sum"`` or
   ``"mean"``), made with as few device operations as possible. Numbers the host already knows
   (counts, shapes) are numpy arrays: they become tensors only to join a cross-rank reduction.
   Everything a collector keeps is additive, so under torch.distributed one all-reduce serves all
   collectors; then ONE copy brings every tensor to the host (``transfer.HostCopy``).
2. ``reset_interval()``, at the check: clears per-interval state (queued after that copy).
3. ``finish(state, snapshot, interval_start)``, on the host once the copy has landed (from a GPU,
   at the next step): numpy arithmetic on the raw state (per-layer sums, ratios, the first
   non-finite step), filed into the snapshot.

Per-layer arithmetic runs on the host because it is over O(layers + units) numbers: microseconds
in numpy, where each operation on the device would cost a kernel launch (on a CPU, a dispatch).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Hashable, Iterable, Tuple, Union

import numpy as np
import torch
from torch import nn

from torchhealth.records import Snapshot

State = Dict[str, Tuple[Union[torch.Tensor, np.ndarray], str]]
Arrays = Dict[str, np.ndarray]
IDLE = 1 << 62
"""``idle_steps`` of a collector that needs no per-step call at all."""


@dataclasses.dataclass
class AttachContext:
    """What a collector may read when it attaches to a monitor (``Collector.attach``).

    Attributes:
        model: The model, wrappers (DDP, FSDP1, torch.compile) looked through.
        wrapped: The model as the user passed it.
        optimizer: Its optimizer, or None.
        options: The monitor's ``MonitorOptions`` (``check_every``, ``sample_every``, ...).
        params: ``(name, layer, parameter)`` of every trainable parameter (``layers.parameter_layers``).
        copies: How many ranks hold each parameter's rank-local tensor (``distributed.replica_counts``).
        device: Where the parameters are (the CPU for a model without any).
        facts: The monitor's ``ModelFacts``, shared by every part (forward order, layer types, ...).
        guard: The monitor's ``safety.Guard``: wrap hooks in ``guard.wrap(part, fn)``.
        world_size: Ranks of the process group (1 without one).
        scaler: AMP's GradScaler of a loop that calls ``Monitor.step`` itself, or None.
        skipped_step: Call it when ``scaler`` skipped the step the monitor just recorded: every
            collector gets ``on_skipped_step(recorded=True)``.
    """

    model: nn.Module
    wrapped: nn.Module
    optimizer: torch.optim.Optimizer | None
    options: Any
    params: list
    copies: list[float]
    device: torch.device
    facts: Any
    guard: Any
    world_size: int = 1
    scaler: Any = None
    skipped_step: Any = None


class Collector:
    """Base class of one statistic family's collector.

    Attributes:
        name: Its key in ``Monitor.collectors`` (unique per monitor); its failures are reported as
            the part ``"collector <name>"``.
        parts: Other guarded parts whose failure switches it off too (e.g. ``"activation hooks"``).
        records_quiet_steps: Whether ``quiet_step`` records something (asked after those that only test).
    """

    name = "collector"
    parts: tuple[str, ...] = ()
    records_quiet_steps = False

    def attach(self, context: AttachContext) -> bool:
        """Binds the collector to one monitor's model (hooks, device, parameters); called once, last
        in the monitor's construction, in list order.

        Returns:
            False when it does not apply to this model or loop (it is then dropped), else True.
        """
        return True

    # -- schedule and per-step calls ---------------------------------------------------------------
    def reads(self, logging: bool) -> bool:
        """Whether a check reads ``state()``: ``logging`` says whether the check writes TensorBoard."""
        return True

    def idle_steps(self, step: int) -> int:
        """How many steps from ``step`` on need no ``on_step``/``after_step`` (``quiet_step`` only).

        The monitor takes the minimum over its collectors and the check schedule. ``0`` asks for the
        full path at ``step``; the default (``IDLE``) never asks. Must not change between two calls
        unless a full step ran.
        """
        return IDLE

    def on_step(self, loss: Any, offset: int) -> bool:
        """One full training step, before its check; ``offset`` is the step's place in the check interval.

        Returns:
            True to ask for a check at this step (the loss trip-wire); the default asks nothing.
        """
        return False

    def after_step(self, step: int) -> None:
        """The end of full step ``step``, after its check (e.g. prepare the next forward's hooks)."""

    def quiet_step(self, loss: Any, offset: int) -> bool:
        """A step inside an idle range. Returns False, having recorded nothing, when the step needs
        the full path after all; the default needs nothing and returns True."""
        return True

    # -- events ------------------------------------------------------------------------------------
    def on_loss(self, loss: Any, offset: int) -> None:
        """A training loss reported with ``Monitor.log_loss`` (the step is not over)."""

    def on_validation_loss(self, loss: Any) -> None:
        """A validation loss reported with ``Monitor.log_validation``."""

    def on_skipped_step(self, recorded: bool) -> None:
        """AMP's GradScaler skipped an optimizer step. ``recorded``: the monitor had recorded that
        step (``Monitor(scaler=)``); else the step never reached the monitor (``watch``, callbacks)."""

    def pending(self) -> bool:
        """Whether something recorded outside steps waits for a check (read by ``close()``'s final check)."""
        return False

    def resume(self, step: int) -> None:
        """The monitor resumes at ``step`` (``Monitor.load_state_dict``), after ``reset_interval``."""

    # -- the check ---------------------------------------------------------------------------------
    def state(self) -> State:
        """Returns ``{name: (tensor or host array, "sum" | "mean")}``: additive raw state to reduce and read."""
        return {}

    def layout(self) -> Hashable:
        """What the layout of ``state()`` depends on beyond the shapes of its tensors (``()`` when nothing).

        Under torch.distributed the ranks agree on it before they reduce (``distributed.LayoutAgreement``):
        state that a collector creates as data arrives (one row per activation site) says here which
        rows it holds, in order. A layout that changes only with the shapes of ``state()`` needs nothing.
        """
        return ()

    def adopt_layout(self, layouts: list[Hashable]) -> bool:
        """Lays ``state()`` out as the union of ``layouts`` (every rank's ``layout()``, rank 0 first).

        Rows this rank has not seen start empty, so that they reduce to what the ranks that saw them
        contribute. Returns False when the collector cannot (the default): the ranks' states are then
        incompatible and the collector is switched off on every rank.
        """
        return False

    def reset_interval(self) -> None:
        """Clears state that covers one check interval (called at the check, after ``state``)."""

    def finish(self, state: Arrays, snapshot: Snapshot, interval_start: int) -> None:
        """Files statistics computed from the host copy of ``state`` into ``snapshot``.

        Host only: by now the device state may be a step further.

        Args:
            state: What ``state()`` returned (reduced across ranks), as numpy arrays; empty when
                ``state()`` failed.
            snapshot: The snapshot being built.
            interval_start: First step of the interval this check covers.
        """

    def close(self) -> None:
        """Removes hooks and frees state."""


def host_values(values: Iterable[float]) -> np.ndarray:
    """Host-side numbers of a check's state, as float32 like the device state they travel with."""
    return np.fromiter(values, dtype=np.float32)


def file_values(snapshot: Snapshot, family: str, layers: Iterable[str], values: Iterable[float]) -> None:
    """Puts ``values`` of ``layers`` into ``snapshot.stats[family]`` (the family appears only if one does)."""
    numbers = values.tolist() if isinstance(values, np.ndarray) else [float(v) for v in values]
    pairs = list(zip(layers, numbers))
    if pairs:
        snapshot.stats.setdefault(family, {}).update(pairs)


def first_nonfinite(markers: np.ndarray) -> np.ndarray:
    """Offset of the first non-finite marker along the last axis, or -1 where there is none."""
    bad = ~np.isfinite(markers)
    return np.where(bad.any(axis=-1), bad.argmax(axis=-1), -1)


class StepFlags:
    """Per-step markers over one check interval, kept on the device.

    ``mark`` adds a value at the step's offset in the interval (one in-place add, no test, no host
    sync). An offset whose sum is NaN/Inf saw a non-finite value; the sums survive a cross-rank
    *sum* (NaN and Inf propagate), so no second collective is needed to find the earliest.
    """

    def __init__(self, length: int, device: torch.device) -> None:
        self.use(torch.zeros(length, device=device))

    def use(self, flags: torch.Tensor) -> None:
        """Keeps the markers in ``flags`` (a 1-d tensor of the same length) from now on."""
        self.flags = flags
        self._slots = flags.unbind()  # views made once: marking is one add, not an index + add

    def to(self, device: torch.device) -> None:
        """Moves the markers to ``device``."""
        self.use(self.flags.to(device))

    def slot(self, offset: int) -> torch.Tensor | None:
        """The 0-d view at ``offset`` (None outside the interval), for batched in-place adds."""
        return self._slots[offset] if 0 <= offset < len(self._slots) else None

    def mark(self, offset: int, value: torch.Tensor) -> None:
        """Adds ``value`` (a 0-d tensor; non-finite marks the step bad) at ``offset``."""
        if 0 <= offset < len(self._slots):
            self._slots[offset].add_(value)

    def reset(self) -> None:
        """Clears all markers."""
        self.flags.zero_()


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


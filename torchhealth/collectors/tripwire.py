"""A loss trip-wire: asks for an early check when the loss jumps or goes non-finite.

Checks run every ``check_every`` steps, but an explosion can overflow within a few steps. The
trip-wire copies every step's loss to the host without waiting for the device and tests it there
at the next step; when it is off, the monitor checks at once instead of at the next scheduled
check, so growth is seen before it turns into inf/NaN.
"""

from __future__ import annotations

import math

import numpy as np
import torch

FLOAT32_MAX = torch.finfo(torch.float32).max
TRIP_FACTOR = 3.0
"""|loss| trips the wire above this multiple of its reference: the larger of the typical |loss| of
the first check interval and a running mean of |loss| over the steps since."""
DECAY = 0.9
"""Weight of the past in that running mean, per step."""


class LossTripwire:
    """Per-step loss test on the host, from a copy that arrives without a synchronization.

    ``record`` copies the step's loss into its slot of a host buffer: on a GPU asynchronously, into
    pinned memory, followed by a CUDA event; ``tripped`` tests the values whose copies have landed
    (the event is queried, never waited for). One copy a step is all the device sees. A loss
    already in host memory (training on the CPU) is handed over with ``record_value``, needs no
    copy and is tested at once; ``tripped`` reports it at the next step, as it would a copied one.
    The limit is set from each check's losses (``set_typical``).
    """

    def __init__(self, interval: int, device: torch.device) -> None:
        self.limit = math.inf  # until the first check has set a reference
        self._first_typical: float | None = None
        self._mean: float | None = None
        self._untested: list[tuple[int, int]] = []  # (offset, losses summed there) copied but not yet tested
        self._on_host: list[tuple[float, int]] = []  # (loss, losses summed in it) handed over since ``tripped()``
        self._jumped = False  # whether one of them trips the wire at the current limit
        self._buffers(interval, device)

    def _buffers(self, interval: int, device: torch.device) -> None:
        cuda = device.type == "cuda"
        self._slots = torch.zeros(interval, pin_memory=cuda)  # pinned: the copy need not wait
        self._views = self._slots.unbind()  # made once: a step's copy is one call, not an index and a copy
        self._values = self._slots.numpy()  # read without a torch call (and without waiting for the device)
        self._event = torch.cuda.Event() if cuda else None

    def record(self, total: torch.Tensor, count: int, offset: int) -> None:
        """Copies one step's loss (``total`` of ``count`` micro-batch losses) to the host. No synchronization."""
        if not self.copies_from(total.device):
            self._move_buffers(total.device)  # the model moved between CPU and GPU after attaching
        self._views[offset].copy_(total, non_blocking=True)
        if self._event is not None:
            self._event.record(torch.cuda.current_stream(total.device))
        self._untested.append((offset, count))
        del self._untested[:-len(self._views)]  # a slot copied again replaces its older value

    def _move_buffers(self, device: torch.device) -> None:
        """New buffers for copies from ``device``, holding the values copied so far (a loss
        collector may still read them). Waits for those copies: a move synchronizes anyway."""
        if self._event is not None:
            self._event.synchronize()
        copied = self._values.copy()
        self._buffers(len(self._views), device)
        self._values[:] = copied

    def record_value(self, total: float, count: int) -> None:
        """Hands over one step's loss that is already a host number (``total`` of ``count`` losses).

        It is tested at once, and again if a check sets a new limit before ``tripped`` reports it:
        the limit it meets is the one a copied loss meets at the next step.
        """
        self._on_host.append((total, count))
        del self._on_host[:-len(self._views)]
        self._jumped = self._jumped or _jumps(total, count, self.limit)

    def pending(self) -> bool:
        """Whether a loss handed over, or copied and landed, since the last ``tripped()`` trips the wire.

        Does not clear it: ``tripped()`` still reports it. Never waits for the device.
        """
        self._test_landed()
        return self._jumped

    def copied_values(self) -> np.ndarray:
        """The host slots the losses are copied into, one per offset, as they are now (no waiting)."""
        return self._values

    def copies_from(self, device: torch.device) -> bool:
        """Whether ``record`` copies from ``device`` into the current buffers (without making new ones)."""
        return (self._event is not None) == (device.type == "cuda")

    def set_typical(self, typical: float, steps: int = 1) -> None:
        """Sets the reference from a check: ``typical`` is the mean |loss| of its ``steps`` finite step losses.

        The running mean moves as a per-step running mean would (``DECAY`` per step), so a loss that
        keeps growing keeps tripping the wire instead of carrying the reference up with it.
        """
        if self._first_typical is None:
            self._first_typical = self._mean = typical
        past = DECAY ** steps
        self._mean = past * self._mean + (1 - past) * typical
        limit = TRIP_FACTOR * max(self._first_typical, self._mean)
        self.limit = limit if limit <= FLOAT32_MAX else math.inf  # beyond float32 every finite loss is below it
        self._jumped = any([_jumps(total, count, self.limit) for total, count in self._on_host])

    def tripped(self) -> bool:
        """Whether a loss handed over or copied since the last call jumped or went non-finite.

        A copy still in flight counts at a later call.
        """
        self._test_landed()
        jumped, self._jumped, self._on_host = self._jumped, False, []
        return jumped

    def _test_landed(self) -> None:
        """Hands the copied losses over as host numbers once their copies have landed (the event is
        queried, never waited for)."""
        if self._untested and (self._event is None or self._event.query()):
            untested, self._untested = self._untested, []
            for offset, count in untested:
                self.record_value(float(self._values[offset]), count)


def _jumps(total: float, count: int, limit: float) -> bool:
    """Whether a step's loss (``total`` of ``count`` losses) trips a wire set at ``limit`` per loss."""
    # |loss|: objectives such as negative log-likelihoods can be negative. NaN and Inf fail the
    # comparison too (strict: Inf is not below an infinite limit), so one test covers both.
    return not abs(total) < limit * count

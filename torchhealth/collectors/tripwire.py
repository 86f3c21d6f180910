"""A loss trip-wire: asks for an early check when the loss jumps or goes non-finite.

Checks run every ``check_every`` steps, but an explosion can overflow within a few steps. The
trip-wire watches every step's loss on the device and tells the host, without waiting for the
device, that something is off; the monitor then checks at once instead of at the next scheduled
check, so growth is seen before it turns into inf/NaN.
"""

from __future__ import annotations

import math

import torch

FLOAT32_MAX = torch.finfo(torch.float32).max
TRIP_FACTOR = 3.0
"""|loss| trips the wire above this multiple of its reference: the larger of the typical |loss| of
the first check interval and of the latest one read."""


class LossTripwire:
    """Per-step loss test on the device, read by the host one step later without a synchronization.

    ``record`` costs two small kernels on a CPU (``abs``, and a comparison written straight into
    host memory) and, on a GPU, a third: an asynchronous copy of the flag into pinned host memory,
    which ``tripped`` reads once it has landed (a CUDA event that is queried, never waited for).
    The limit it compares with is set from each check's losses (``set_typical``), so a step runs
    no arithmetic to keep a running reference.
    """

    def __init__(self, device: torch.device) -> None:
        self._limit: torch.Tensor | None = None
        self._first_typical: float | None = None
        self._host_flag(device)

    def _host_flag(self, device: torch.device) -> None:
        cuda = device.type == "cuda"
        host = torch.ones(1, dtype=torch.bool, pin_memory=cuda)  # "within bounds"; pinned: the copy need not wait
        self._within = host[0]
        self._host = host.numpy()  # read without a torch call (and without waiting for the device)
        self._event = torch.cuda.Event() if cuda else None

    def record(self, loss: torch.Tensor) -> None:
        """Tests one 0-d float loss on its device. No host synchronization."""
        if self._limit is None or self._limit.device != loss.device:
            if (self._event is not None) != (loss.device.type == "cuda"):
                self._host_flag(loss.device)  # the model moved between CPU and GPU after attaching
            limit = math.inf if self._first_typical is None else self._limit_value(self._first_typical)
            with torch.inference_mode(False):
                self._limit = torch.full((), limit, device=loss.device)
        # |loss|: objectives such as negative log-likelihoods can be negative. NaN and Inf fail the
        # comparison too (strict: Inf is not below an infinite limit), so one test covers both.
        if self._event is None:
            torch.lt(loss.abs(), self._limit, out=self._within)
        else:
            self._within.copy_(loss.abs() < self._limit, non_blocking=True)
            self._event.record()

    def set_typical(self, typical: float) -> None:
        """Sets the reference from a check: ``typical`` is the mean |loss| of its interval's finite losses."""
        if self._first_typical is None:
            self._first_typical = typical
        if self._limit is not None:
            self._limit.fill_(self._limit_value(typical))

    def _limit_value(self, typical: float) -> float:
        limit = TRIP_FACTOR * max(self._first_typical or 0.0, typical)
        return limit if limit <= FLOAT32_MAX else math.inf  # the limit is a float32 tensor

    def tripped(self) -> bool:
        """Whether the last recorded loss tripped the wire (False while its copy is still in flight)."""
        if self._event is not None and not self._event.query():
            return False
        return not self._host[0]

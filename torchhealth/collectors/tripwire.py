"""A loss trip-wire: asks for an early check when the loss jumps or goes non-finite.

Checks run every ``check_every`` steps, but an explosion can overflow within a few steps. The
trip-wire watches every step's loss on the device and tells the host, without waiting for the
device, that something is off; the monitor then checks at once instead of at the next scheduled
check, so growth is seen before it turns into inf/NaN.
"""

from __future__ import annotations

import math

import torch

TRIP_FACTOR = 3.0
"""|loss| trips the wire above this multiple of its reference: max(|first loss|, running mean of |loss|)."""
DECAY = 0.9
"""Weight of the past in the running mean of finite |loss|."""


class LossTripwire:
    """Per-step loss test on the device, read by the host one step later without a synchronization.

    ``record`` costs a few tiny kernels and an asynchronous copy of one flag into pinned host memory;
    ``tripped`` reads that memory once the copy has landed (a CUDA event that is queried, never
    waited for). On the CPU the flag is simply there.
    """

    def __init__(self, device: torch.device) -> None:
        self._first: torch.Tensor | None = None
        self._mean: torch.Tensor | None = None
        self._host_flag(device)

    def _host_flag(self, device: torch.device) -> None:
        cuda = device.type == "cuda"
        host = torch.ones(1, dtype=torch.bool, pin_memory=cuda)  # "within bounds"; pinned: the copy need not wait
        self._within = host[0]
        self._host = host.numpy()  # read without a torch call (and without waiting for the device)
        self._event = torch.cuda.Event() if cuda else None

    def record(self, loss: torch.Tensor) -> None:
        """Tests one 0-d float loss on its device: eight small kernels, no host synchronization."""
        size = loss.abs()  # magnitudes: objectives such as negative log-likelihoods can be negative
        if self._first is None or self._first.device != size.device:
            if (self._event is not None) != (size.device.type == "cuda"):
                self._host_flag(size.device)  # the model moved between CPU and GPU after attaching
            with torch.inference_mode(False):
                self._first = torch.where(size < math.inf, size, 0.0)
                self._mean = self._first.clone()
        # NaN and Inf fail this comparison too, so one test covers the jump and non-finite values
        within = size <= TRIP_FACTOR * torch.maximum(self._first, self._mean)
        self._within.copy_(within, non_blocking=True)
        if self._event is not None:
            self._event.record()
        self._mean.lerp_(torch.where(size < math.inf, size, self._mean), 1 - DECAY)  # finite sizes only

    def tripped(self) -> bool:
        """Whether the last recorded loss tripped the wire (False while its copy is still in flight)."""
        if self._event is not None and not self._event.query():
            return False
        return not self._host[0]

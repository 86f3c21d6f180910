"""Activation sites and their buffers: where each activation's running statistics live on the device.

A *site* is one place an activation runs: a call of an activation module (a module called several
times in one forward gets one site per call) or a functional call (``F.relu``, ``torch.tanh``...)
inside some module's ``forward``, named after that module. ``SiteBuffers`` holds every site's
running state side by side, so that a check reads and resets all of them with no per-site operation.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import torch

from torchhealth.collectors.base import StepFlags

SATURATION_LEVEL = 0.97
"""|tanh| above this (or sigmoid within 0.03 of 0 or 1) counts as saturated."""


def positive_counts(x: torch.Tensor, dims: tuple[int, ...] | None) -> torch.Tensor:
    """Float32 count of the positive values of ``x`` (a ReLU output, so >= 0) over ``dims`` (None: all).

    A NaN output counts as positive in the L0 norm (float32 on a GPU) and makes the count NaN in
    ``sign().sum()`` (everywhere else); the site's ``amax`` flags it either way.
    """
    if x.is_cuda and x.dtype is torch.float32:
        # one reduction (the L0 norm counts non-zeros): a launch costs more host time on a GPU
        # than the pass over the output; on the CPU this is 8-20x slower than the two below
        return torch.linalg.vector_norm(x, 0, dim=dims)
    # ReLU outputs are >= 0, so sign() is 1 where positive and 0 where off; a float sum of it is
    # several times faster on CPU than (x > 0).sum(dims)
    signs = x.sign()
    return signs.sum(dim=dims, dtype=torch.float32) if dims is not None else signs.sum(dtype=torch.float32)


class Site:
    """Running statistics of one activation site.

    A sampled forward costs three small kernels at a ReLU site (amax; sign, sum: float32 outputs on
    a GPU need one reduction instead of sign and sum), four at a tanh site and five at a sigmoid
    site; ``ActivationCollector.file_step`` adds them into the running state for all sites at once,
    and everything derived (zero fraction, window totals) is computed at the check. A new site's
    tensors are its own, on the device of its outputs; before its statistics are filed they become
    views of the collector's buffers (``bind``), which hold every site's state side by side.
    """

    def __init__(self, name: str, kind: str, units: int, axis: int | None, device: torch.device, interval: int,
                 placeholder: bool = False):
        self.name, self.kind, self.units, self.axis = name, kind, units, axis
        # a site another rank saw (``ActivationCollector.adopt_layout``): its unit axis is worked out from
        # the first output this rank sees
        self.placeholder = placeholder
        # normal tensors even when the first call comes from an eval under torch.inference_mode():
        # inference tensors could never be updated in place by the training forwards that follow
        with torch.inference_mode(False):
            self.fires = torch.zeros(units, device=device)  # per-unit positive outputs, this window before this interval
            self.positive = torch.zeros(units, device=device)  # per-unit positive outputs, this interval (ReLU)
            self.off = torch.zeros((), device=device)  # saturated outputs, this interval (sigmoid/tanh)
            self.flags = StepFlags(interval, device)
        self.target = self.positive if kind == "relu" else self.off  # where a forward's count is added
        self.numel = 0  # outputs seen this interval (host-side: shapes are known without a sync)
        self.window_samples = 0  # samples in the current dead-unit window
        # What each forward of this step saw, filed by ``file_step`` outside the forward (a hook that
        # read changing Python numbers, such as the step offset, would recompile under torch.compile):
        # (output maximum, per-unit positive or saturated count, outputs, samples).
        self.seen: list[tuple[torch.Tensor, torch.Tensor, int, int]] = []
        self.shape: torch.Size | None = None  # the output shape whose unit axis was last worked out
        self.reduce_dims: tuple[int, ...] | None = None  # every axis of that shape but the unit axis
        self.per_call = (0, 0)  # outputs and samples in one output of that shape
        self.device = self.fires.device  # where its outputs arrive
        self.device_index = self.home = self.fires.get_device()  # of the outputs, of the running tensors

    def bind(self, fires: torch.Tensor, positive: torch.Tensor, off: torch.Tensor, markers: torch.Tensor) -> None:
        """Keeps the running state in these tensors from now on (views of the collector's buffers)."""
        self.fires, self.positive, self.off = fires, positive, off
        self.flags.use(markers)
        self.target = self.positive if self.kind == "relu" else self.off
        self.home = fires.get_device()

    def observe(self, x: torch.Tensor) -> None:
        """Adds one output tensor's statistics, on ``x``'s device. No host synchronization."""
        # The largest output is NaN when any is, and +Inf when any is: activation outputs are never
        # -Inf (ReLU clamps it to 0, sigmoid/tanh are bounded), so one amax replaces a finiteness test.
        largest = x.amax()
        if self.kind == "relu":
            count = positive_counts(x, self.reduce_dims)
        else:
            centred = x.abs() if self.kind == "tanh" else (x - 0.5).abs()  # |2(x - 0.5)| > L  <=>  |x - 0.5| > L/2
            count = (centred > (SATURATION_LEVEL if self.kind == "tanh" else SATURATION_LEVEL / 2)).sum(dtype=torch.float32)
        numel, samples = self.per_call
        self.seen.append((largest, count, numel, samples))


@dataclasses.dataclass
class SiteBuffers:
    """The buffers that hold every site's running state (where most sites' outputs arrive), the
    views a check reads, and the layout that ``finish`` reads them with."""

    order: list[Site]
    window: torch.Tensor  # every site's ``fires``, in site order
    interval: torch.Tensor  # what one check interval adds: ``positive``, then ``off``, then ``markers``
    positive: torch.Tensor  # every site's ``positive``
    off: torch.Tensor  # every site's ``off``
    markers: torch.Tensor  # every site's step markers, one row of ``interval`` length per site, flattened
    units: np.ndarray  # per site
    starts: np.ndarray  # where each site's units start in ``window`` and ``positive``
    relu: np.ndarray  # which sites are ReLUs
    names: list[str]  # of the sites, in order
    all_relu: bool  # every site is a ReLU
    columns: tuple[torch.Tensor, ...]  # per step offset, every site's marker; only when every site counts ReLU units

    @classmethod
    def lay_out(cls, sites: list[Site], interval: int) -> "SiteBuffers":
        """Moves every site's running state into new buffers (each site then holds views of them).

        They live where most sites' outputs arrive, on an accelerator if any site's are: counts then
        reach them without a synchronization (``transfer.to_device``).
        """
        order = list(sites)
        devices = collections.Counter(s.device for s in order)
        device = max(devices, key=lambda d: (d.type != "cpu", devices[d]))
        units = np.array([s.units for s in order])
        total, n = int(units.sum()), len(order)
        starts = np.concatenate([[0], np.cumsum(units)[:-1]]).astype(np.intp)
        with torch.inference_mode(False):  # the values so far move into the new buffers
            window = torch.cat([s.fires.to(device) for s in order])
            interval_state = torch.cat([s.positive.to(device) for s in order]
                                       + [s.off.reshape(1).to(device) for s in order]
                                       + [s.flags.flags.to(device) for s in order])
        markers = interval_state[total + n:]
        for i, (site, start, count) in enumerate(zip(order, starts.tolist(), units.tolist())):
            site.bind(window[start:start + count], interval_state[start:start + count], interval_state[total + i],
                      markers[i * interval:(i + 1) * interval])
        per_unit_relu = all(s.kind == "relu" and s.axis is not None for s in order)
        relu = np.array([s.kind == "relu" for s in order])
        return cls(order=order, window=window, interval=interval_state, positive=interval_state[:total],
                   off=interval_state[total:total + n], markers=markers, units=units, starts=starts, relu=relu,
                   names=[s.name for s in order], all_relu=bool(relu.all()),
                   columns=markers.view(n, interval).unbind(1) if per_unit_relu else ())

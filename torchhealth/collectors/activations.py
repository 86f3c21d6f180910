"""Activation statistics from forward hooks: ReLU zero fraction, per-unit activity, saturation.

A *site* is one place an activation runs: a call of an activation module (a module called several
times in one forward gets one site per call) or a functional call (``F.relu``, ``torch.tanh``...)
inside some module's ``forward``, seen through a TorchFunctionMode and named after that module.
Statistics are computed inside the hook, before later in-place ops can change the tensor, and only
on sampled forwards; on other forwards a hook returns before touching the tensor.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import sys
from itertools import compress
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.hooks import RemovableHandle

from torchhealth.collectors.base import Arrays, Collector, State, StepFlags, file_values, first_nonfinite, host_values
from torchhealth.facts import ModelFacts
from torchhealth.safety import Guard
from torchhealth.layers import ROOT_NAME, activation_kind, clean_name, compiled_wrapper, unit_axis, unwrap
from torchhealth.snapshot import Snapshot
from torchhealth.transfer import to_device

logger = logging.getLogger("torchhealth")

MAX_SITES_PER_MODULE = 16
UNSEEN_FORWARDS_BEFORE_WARNING = 3
"""Sampled steps in a row whose forwards ran none of the activation hooks before the monitor says so."""
SATURATION_LEVEL = 0.97
"""|tanh| above this (or sigmoid within 0.03 of 0 or 1) counts as saturated."""

FUNCTIONAL_ACTIVATIONS: dict[Callable[..., Any], str] = {
    F.relu: "relu", F.relu_: "relu", torch.relu: "relu", torch.relu_: "relu",
    torch.Tensor.relu: "relu", torch.Tensor.relu_: "relu", F.relu6: "relu",
    torch.sigmoid: "sigmoid", torch.Tensor.sigmoid: "sigmoid", torch.Tensor.sigmoid_: "sigmoid",
    F.sigmoid: "sigmoid", torch.tanh: "tanh", torch.Tensor.tanh: "tanh", torch.Tensor.tanh_: "tanh", F.tanh: "tanh",
}


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

    def __init__(self, name: str, kind: str, units: int, axis: int | None, device: torch.device, interval: int):
        self.name, self.kind, self.units, self.axis = name, kind, units, axis
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


SILENT_SPAN = 0.5
"""Share of a window a unit must stay silent for to count in ``silent_units``: half, so units that die
early in a window are reported in half the time the firm verdict (a whole window after they died,
when the next window closes) takes."""


class ActivationCollector(Collector):
    """Hooks activation modules (and, optionally, functional activations) of a model."""

    def __init__(self, model: nn.Module, facts: ModelFacts, interval: int, window_samples: int,
                 functional: bool = True, guard: Guard | None = None) -> None:
        self.model = unwrap(model)
        self.facts = facts
        self.interval = interval
        self.window_samples = window_samples
        self._sampling = True
        # set once a forward runs under torch.compile, or when part of the model is compiled already: hooks then stay
        self._compiled = _compiled_inside(self.model)
        self._closed = False
        self._start_handle: RemovableHandle | None = None  # the model's pre-forward hook
        self._sampled_hooks: _SwitchedHooks | None = None  # the model's post-forward hook and the activation hooks
        self.observed: list[Site] = []  # sites that saw outputs since the last ``file_step``, each once
        self.sites: dict[tuple[str, int], Site] = {}
        self._calls: dict[str, int] = {}
        self._names = {m: clean_name(n) for n, m in self.model.named_modules()}
        self._hooked = {m: kind for m in self._names if (kind := activation_kind(m))}  # module -> kind
        self._functional = functional
        self._discovering = True  # the first sampled forward also records forward order
        self._functional_seen = False  # set when a functional site is found: the mode is needed again
        self._stack: list[nn.Module] = []
        self._mode: _FunctionalActivationMode | None = None
        self._global_handles: list[RemovableHandle] = []
        self._tensors: _SiteTensors | None = None  # the sites' buffers, until a site is added or its outputs move
        self._read: _SiteTensors | None = None  # the sites of the last state(), in the order of its tensors
        self._counted: list[int] = []  # their window samples at that check
        self._silence: dict[str, np.ndarray] = {}  # per ReLU site: each unit's sampled inputs since it last fired
        self._silence_base: dict[str, float] = {}  # per ReLU site: its window samples at the last check
        self._guard = guard or Guard(strict=True)
        self._hooks_ran = False  # an activation hook ran in this step's sampled forwards
        self._unseen_forwards = 0  # sampled steps in a row in which none ran
        self._warned_unseen = False
        self._update_hooks()

    @property
    def sampling(self) -> bool:
        """Whether the next forwards are sampled. Set by the monitor before each step's forward."""
        return self._sampling

    @sampling.setter
    def sampling(self, on: bool) -> None:
        self._sampling = on
        self._update_hooks()

    def prepare(self, sampling: bool) -> None:
        """Sets whether the next forwards are sampled, with the hooks that needs (called every step: cheap)."""
        if sampling != self._sampling or (self._start_handle is None and compiler_loaded()):
            self.sampling = sampling

    def settled(self) -> bool:
        """Whether the next unsampled steps need nothing from this collector: no sampled statistics
        wait to be filed, and ``prepare(False)`` would change nothing (the compile-safe pre-hook is
        in place, or not needed because torch.compile is not loaded, or the collector is closed)."""
        return not self._sampling and not self.observed and (
            self._start_handle is not None or self._closed or not compiler_loaded())

    def _update_hooks(self) -> None:
        # In eager mode the model and its activation modules carry hooks only for sampled forwards:
        # any forward hook sends a module call down PyTorch's slow path, even one that returns at
        # once. A compiled forward keeps the hooks it was traced with (hooks added later are not
        # seen unless the model itself had a hook when it was traced), so once torch.compile is
        # loaded (any torch.optim optimizer loads it) the model's pre-forward hook stays: whenever
        # the first compiled forward runs, it meets it and notes that it is compiled; every hook
        # then stays, and the first sampled forward is traced again with all of them (the pre-hook
        # reads ``_sampling``, which dynamo guards on).
        if self._closed:
            return
        activation = self._sampling or self._compiled
        if (activation or compiler_loaded()) and self._start_handle is None:
            self._start_handle = self.model.register_forward_pre_hook(self._on_model_start)
        if not activation:
            self._end_interrupted_forward()
            if self._sampled_hooks is not None:
                self._sampled_hooks.switch(False)
            if not compiler_loaded() and self._start_handle is not None:
                self._start_handle.remove()
                self._start_handle = None
            return
        if self._sampled_hooks is None:
            hooks = self._sampled_hooks = _SwitchedHooks()
            hooks.add(self.model, self._on_model_end_guarded, always_call=True)
            for module, kind in self._hooked.items():  # unguarded: they test a flag before calling guarded code
                hooks.add(module, _ActivationHook(self, self._names[module], kind))
        self._sampled_hooks.switch(True)

    def _remove_hooks(self) -> None:
        self._end_interrupted_forward()
        if self._sampled_hooks is not None:
            self._sampled_hooks.remove()
            self._sampled_hooks = None
        if self._start_handle is not None:
            self._start_handle.remove()
            self._start_handle = None

    # -- hooks ---------------------------------------------------------------------------------
    def _end_interrupted_forward(self) -> None:
        if self._mode is not None or self._global_handles:
            self._on_model_end(self.model, (), None)  # a forward interrupted by a BaseException left them

    def _on_model_start(self, module: nn.Module, args: Any) -> None:
        # unguarded: on the usual (unsampled) forward it only tests flags, before any guarded code
        if not self._compiled and torch.compiler.is_compiling():
            self._compiled = True
        if self._sampling or self._mode is not None or self._global_handles:
            self._guard.call("activation hooks", self._start_sampled_forward)

    def _start_sampled_forward(self) -> None:
        self._end_interrupted_forward()
        if not self._sampling:
            return
        self._calls.clear()
        # Not again once part of the model is compiled: its graphs guard on the global hooks and the
        # function mode, and new ones at every sampled forward would recompile it every time.
        if not (self._discovering or (self._functional and self._functional_seen and not self._compiled)):
            return
        if torch.compiler.is_compiling():
            # Global hooks and a function mode cannot be set up inside a compiled graph (a graph
            # break); under torch.compile only activation modules are watched (docs/performance.md).
            return
        self._stack = [self.model]
        wrap = self._guard.wrap
        self._global_handles = [
            nn.modules.module.register_module_forward_pre_hook(wrap("activation hooks", self._on_any_start)),
            nn.modules.module.register_module_forward_hook(wrap("activation hooks", self._on_any_end), always_call=True),
        ]
        if self._functional:
            self._mode = _FunctionalActivationMode(self)
            self._mode.__enter__()

    def _on_model_end_guarded(self, module: nn.Module, args: Any, output: Any) -> None:
        # A guarded part of its own, not switched off with the other hooks: it must always leave the
        # function mode and global hooks. A method, not a closure: a deep copy of the model (an EMA
        # copy) then ends the forwards of the copy of this collector that began them.
        self._guard.call("activation cleanup", self._on_model_end, module, args, output)

    def _on_model_end(self, module: nn.Module, args: Any, output: Any) -> None:
        handles, self._global_handles = self._global_handles, []
        for handle in handles:
            handle.remove()
        if self._mode is not None:
            mode, self._mode = self._mode, None
            mode.__exit__(None, None, None)
        if self._sampling:
            self._discovering = False

    # The global hooks and the function mode of a discovering forward also fire inside a compiled
    # part of an eager model; there they do nothing (dynamo fails on lookups in the dicts keyed by
    # modules, which hold the module it traces), as the discovery does under a compiled model.
    def _on_any_start(self, module: nn.Module, args: Any) -> None:
        if torch.compiler.is_compiling():
            return
        name = self._names.get(module)
        if name is not None:
            self._stack.append(module)
            if self._discovering:
                self.facts.note_forward(name)

    def _on_any_end(self, module: nn.Module, args: Any, output: Any) -> None:
        if torch.compiler.is_compiling():
            return
        if self._stack and self._stack[-1] is module:
            self._stack.pop()

    def _on_activation(self, name: str, kind: str, output: Any) -> None:
        if not self._sampling:
            return
        self._hooks_ran = True
        if torch.compiler.is_compiling():  # a compiled part that the model's own pre-hook does not see
            self._compiled = True
        elif _recomputing():  # folded away when traced: no graph break
            return
        if self._evaluating():
            return
        self._guard.call("activation hooks", self._observe, name, kind, output)

    def _evaluating(self) -> bool:
        """An evaluation forward (eval mode, no grad) between training steps: not training statistics.

        Both are needed: reentrant activation checkpointing runs its first pass without grad in
        training mode, and some fine-tuning trains with the model in eval mode.
        """
        return not self.model.training and not torch.is_grad_enabled()

    def on_functional(self, kind: str, output: Any) -> None:
        """Called by the function mode for each functional activation outside hooked modules."""
        self._hooks_ran = True
        owner = self._stack[-1] if self._stack else self.model
        if owner in self._hooked or self._evaluating():
            return  # an activation module calling F.relu: already seen by its own hook
        name = self._names.get(owner, ROOT_NAME)
        self._observe(f"{name}:{kind}", kind, output)

    # -- statistics ----------------------------------------------------------------------------
    def _observe(self, name: str, kind: str, output: Any) -> None:
        if not isinstance(output, torch.Tensor) or not output.is_floating_point():
            return
        call = self._calls.get(name, 0)
        self._calls[name] = call + 1
        key = (name, call) if call < MAX_SITES_PER_MODULE else (name, MAX_SITES_PER_MODULE - 1)
        site = self.sites.get(key)
        x = output.detach()
        if site is None or x.shape != site.shape:  # the unit axis is worked out once per output shape
            if not x.numel() or not x.dim():
                self._calls[name] = call  # an empty or 0-d output is no call: later calls keep their names
                return
            site = self._site_for(key, kind, x)
            if site is None:
                return
        index = x.get_device()
        if index != site.device_index:  # the model was moved: the buffers follow before filing
            site.device, site.device_index = x.device, index
            self._tensors = None
        first = not site.seen  # its first call in this step: ``observed`` lists each site once
        site.observe(x)
        if first:
            self.observed.append(site)

    def _site_for(self, key: tuple[str, int], kind: str, x: torch.Tensor) -> Site | None:
        """The site of ``key`` for an output shaped like ``x`` (made on its first call), or None to skip it."""
        name, site = key[0], self.sites.get(key)
        axis = unit_axis(x.shape, channels_first=x.dim() == 3 and x.shape[1] in self.facts.conv1d_channels)
        units = x.shape[axis] if axis is not None else 1
        if site is None:
            site_name = name if key[1] == 0 else f"{name}#{key[1]}"
            site = self.sites[key] = Site(site_name, kind, units, axis, x.device, self.interval)
            self._tensors = None  # laid out into the buffers before its statistics are filed
            self._functional_seen = self._functional_seen or ":" in name
            self.facts.activations.setdefault(site_name, kind)
            self.facts.note_forward(site_name)
        elif (axis, units) != (site.axis, site.units):
            return None  # another layout (an unbatched call, a capped site of another width): never mix units
        site.shape = x.shape
        site.reduce_dims = tuple(d for d in range(x.dim()) if d != axis) if axis is not None else None
        site.per_call = (x.numel(), x.shape[0] if axis == 1 or axis is None else x.numel() // max(units, 1))
        return site

    def file_step(self, offset: int) -> None:
        """Files what this step's forwards saw under the step's ``offset`` in the check interval.

        Called by the monitor once per step, outside the forward; returns at once on steps whose
        forwards were not sampled. When every site ran once and counts ReLU units (the usual
        model), four launches for all sites; otherwise two foreach adds (and one more launch for
        each site called several times in the step, or whose outputs are on another device than
        the buffers). No host synchronization.
        """
        if self._sampling:
            if self._hooks_ran:
                self._unseen_forwards = 0
            else:
                self._note_unseen_forward()
            self._hooks_ran = False
        # The calls of this step are filed: the next step's start again at the first site of each module
        # (also where the model's own forward, which clears them too, is not called: a Lightning
        # training_step that calls its parts).
        self._calls.clear()
        if not self.observed:
            return
        if self._tensors is None:  # a new site, or the model moved: the buffers are laid out first
            self._site_tensors()
        tensors = self._tensors
        sites, self.observed = self.observed, []
        largest, counts = [], []
        simple = True  # one call per site, outputs where the buffers are
        for site in sites:
            seen, site.seen = site.seen, []
            if len(seen) == 1:  # the usual case: one call of the site in this step
                most, count, numel, samples = seen[0]
            else:  # several calls: their largest output (a sum could overflow in fp16), their counts summed
                most = torch.stack([m for m, _, _, _ in seen]).amax()
                count, numel, samples = (sum(column) for column in list(zip(*seen))[1:])
                simple = False
            if site.device_index != site.home:  # a model spread over devices: the buffers are on one of them
                most, count = to_device(most, site.fires.device), to_device(count, site.fires.device)
                simple = False
            largest.append(most)
            counts.append(count)
            site.numel += numel
            site.window_samples += samples
        in_interval = 0 <= offset < self.interval
        if simple and tensors.columns and sites == tensors.order:
            # every site once, in buffer order, all per-unit ReLU counts: four launches instead of a
            # per-site add each (a foreach add is a loop of adds on the CPU)
            if in_interval:
                tensors.columns[offset].add_(torch.stack(largest))
            tensors.positive.add_(torch.cat(counts))
            return
        if in_interval:
            torch._foreach_add_([site.flags.slot(offset) for site in sites], largest)
        torch._foreach_add_([site.target for site in sites], counts)

    def _note_unseen_forward(self) -> None:
        """Says once when the activation hooks have run on none of several sampled steps in a row.

        The usual cause is a compiled graph traced without the monitor's hooks: dynamo does not
        guard on module hooks (``skip_nnmodule_hook_guards``), so a graph traced for another model
        of the same class, or for this model before the monitor attached, can run in place of the
        one with the hooks.
        """
        if self._warned_unseen or self._closed or not self._hooked:
            return
        self._unseen_forwards += 1
        if self._unseen_forwards < UNSEEN_FORWARDS_BEFORE_WARNING:
            return
        self._warned_unseen = True
        names = sorted(set(self._names[m] for m in self._hooked))
        logger.warning(
            "torchhealth: the hooks on the model's activation modules (%s%s) ran on none of the last %d sampled "
            "steps, so no activation statistics are being recorded. If the model or part of it is compiled, a graph "
            "that torch.compile traced without the monitor's hooks (for another model of the same class, or before "
            "the monitor attached) may be running in its place, because dynamo does not guard on module hooks: set "
            "torch._dynamo.config.skip_nnmodule_hook_guards = False before the first compiled call. Otherwise the "
            "training forward does not call these modules.",
            ", ".join(repr(name) for name in names[:3]), ", ..." if len(names) > 3 else "", self._unseen_forwards)

    def _site_tensors(self) -> "_SiteTensors":
        """Every site's running state side by side in two buffers (laid out again when a site is
        added or the model moved): a check reads them and resets them with no per-site operation.
        They live where most sites' outputs arrive, on an accelerator if any site's are: counts then
        reach them without a synchronization (``transfer.to_device``)."""
        if self._tensors is None:
            order = list(self.sites.values())
            devices = collections.Counter(s.device for s in order)
            device = max(devices, key=lambda d: (d.type != "cpu", devices[d]))
            units = np.array([s.units for s in order])
            total, n = int(units.sum()), len(order)
            starts = np.concatenate([[0], np.cumsum(units)[:-1]]).astype(np.intp)
            with torch.inference_mode(False):  # the values so far move into the new buffers
                window = torch.cat([s.fires.to(device) for s in order])
                interval = torch.cat([s.positive.to(device) for s in order] + [s.off.reshape(1).to(device) for s in order]
                                     + [s.flags.flags.to(device) for s in order])
            markers = interval[total + n:]
            for i, (site, start, count) in enumerate(zip(order, starts.tolist(), units.tolist())):
                site.bind(window[start:start + count], interval[start:start + count], interval[total + i],
                          markers[i * self.interval:(i + 1) * self.interval])
            per_unit_relu = all(s.kind == "relu" and s.axis is not None for s in order)
            relu = np.array([s.kind == "relu" for s in order])
            self._tensors = _SiteTensors(order, window, interval, interval[:total], interval[total:total + n],
                                         markers, units, starts, relu, [s.name for s in order], bool(relu.all()),
                                         markers.view(n, self.interval).unbind(1) if per_unit_relu else ())
        return self._tensors

    # -- collector contract --------------------------------------------------------------------
    def state(self) -> State:
        if not self.sites:
            self._read = None
            return {}
        self._read = tensors = self._site_tensors()
        order = tensors.order
        self._counted = [s.window_samples for s in order]
        return {  # views of the buffers, no launch; the rest are host numbers, used in ``finish``
            "fires": (tensors.window, "sum"),
            "positive": (tensors.positive, "sum"),
            "off": (tensors.off, "sum"),
            "markers": (tensors.markers, "sum"),
            "numel": (host_values(s.numel for s in order), "sum"),
            "samples": (host_values(self._counted), "sum"),
        }

    def reset_interval(self) -> None:
        if not self.sites:
            return
        tensors = self._site_tensors()  # two launches for all sites
        tensors.window.add_(tensors.positive)
        tensors.interval.zero_()
        for site in tensors.order:
            site.numel = 0

    def finish(self, state: Arrays, snapshot: Snapshot, interval_start: int) -> None:
        read = self._read
        if read is None or "fires" not in state:
            return
        order, units, starts, relu, names = read.order, read.units, read.starts, read.relu, read.names
        positive = state["positive"].astype(np.float64)
        numel = state["numel"]
        with np.errstate(divide="ignore", invalid="ignore"):
            off = np.where(relu, numel - np.add.reduceat(positive, starts), state["off"]) / numel
        seen = numel > 0
        if read.all_relu and seen.all():  # the usual model: one family, every site
            file_values(snapshot, "zero_fraction", names, off)
        else:
            for family, filed in (("zero_fraction", relu & seen), ("saturation", ~relu & seen)):
                file_values(snapshot, family, compress(names, filed), off[filed])
        samples = state["samples"]
        closing = samples >= self.window_samples  # the windows that close at this check
        if closing.any():
            closed = list(compress(order, closing))
            for site, counted in zip(closed, compress(self._counted, closing)):
                site.window_samples -= counted  # samples filed since the check start the next window
            dead = closing & relu
            if dead.any():
                fires = state["fires"] + positive  # per unit, over the window
                share = np.add.reduceat((fires == 0).astype(np.float64), starts) / units
                file_values(snapshot, "dead_units", compress(names, dead), share[dead])
                snapshot.window_samples = max(snapshot.window_samples, int(samples[dead].max()))
            # the device state holds exactly this window: later forwards are in ``positive`` until the next check
            if len(closed) == len(order) and self._tensors is read:  # the usual case: every window closes together
                read.window.zero_()
            else:
                torch._foreach_zero_([site.fires for site in closed])
        markers = state["markers"].reshape(len(order), -1)
        if not np.isfinite(markers.sum()):  # some step saw a non-finite output (a sum of finite maxima rarely overflows)
            for site, offset in zip(order, first_nonfinite(markers).tolist()):
                if offset >= 0:
                    snapshot.nonfinite[f"activation:{site.name}"] = interval_start + offset
        self._file_silence(snapshot, read, positive, samples, closing)

    def _file_silence(self, snapshot: Snapshot, read: "_SiteTensors", positive: np.ndarray, samples: np.ndarray,
                      closing: np.ndarray) -> None:
        """Files ``silent_units``: per ReLU site, the share of units that fired for none of the last half window.

        Host numbers the check has anyway (each unit's positive count this interval): every unit keeps
        the sampled inputs since it last fired, so units that died early in a window are seen half a
        window after they died instead of after the next whole window (a provisional verdict; the
        window's ``dead_units`` is the firm one). An interval with a non-finite output restarts the count:
        NaN is not death.
        """
        silence, base = self._silence, self._silence_base
        span = self.window_samples * SILENT_SPAN
        names, shares = [], []
        for i, (name, start, count) in enumerate(zip(read.names, read.starts.tolist(), read.units.tolist())):
            if not read.relu[i]:
                continue
            new = float(samples[i]) - base.get(name, 0.0)
            fired = positive[start:start + count]
            silent = silence.get(name)
            if silent is None or len(silent) != count:
                silent = np.zeros(count)
            if f"activation:{name}" in snapshot.nonfinite:  # NaN outputs count as 0 (sign(NaN) is 0): not silence
                silence[name] = silent = np.zeros(count)
            else:
                silence[name] = silent = np.where((fired > 0) | np.isnan(fired), 0.0, silent + max(new, 0.0))
            base[name] = 0.0 if closing[i] else float(samples[i])  # a closed window's count restarts from zero
            if new > 0:
                names.append(name)
                shares.append(float((silent >= span).mean()))
        file_values(snapshot, "silent_units", names, shares)

    def close(self) -> None:
        self._closed = True
        self._sampling = False  # a hook that outlived close() (a copy of the model's) records nothing
        self._remove_hooks()


@dataclasses.dataclass
class _SiteTensors:
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


class _ActivationHook:
    """The forward hook of one activation module, its name and kind bound in.

    A compiled forward then traces no lookup in a dict keyed by modules: dynamo fails on one that
    holds the module it is tracing, as the collector's do when part of the model is compiled. An
    object rather than a closure, so that a deep copy of the model (an EMA or teacher copy made
    after attaching) gets hooks that feed a copy of the collector, as bound methods did, instead
    of this one.
    """

    def __init__(self, collector: ActivationCollector, name: str, kind: str) -> None:
        self.collector, self.name, self.kind = collector, name, kind

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        self.collector._on_activation(self.name, self.kind, output)


class _SwitchedHooks:
    """Forward hooks registered once, then switched off and on for each sampled forward.

    Switching takes each hook out of its module's hook dict, or puts it back, which is what
    ``RemovableHandle.remove()`` and ``register_forward_hook`` do to that dict: a dict operation
    per module instead of a new handle (weak references, a new id) per module, on the step
    before every sampled forward. A module without hooks keeps PyTorch's fast call path.
    """

    def __init__(self) -> None:
        self._hooks: list[tuple[nn.Module, RemovableHandle, Callable[..., Any]]] = []
        self._on = True

    def add(self, module: nn.Module, hook: Callable[..., Any], always_call: bool = False) -> None:
        """Registers ``hook`` as a forward hook of ``module`` (switched on)."""
        self._hooks.append((module, module.register_forward_hook(hook, always_call=always_call), hook))

    def switch(self, on: bool) -> None:
        """Puts every hook into its module's hook dict (``on``) or takes it out."""
        if on == self._on:
            return
        self._on = on
        for module, handle, hook in self._hooks:
            if on:
                module._forward_hooks[handle.id] = hook
            else:
                module._forward_hooks.pop(handle.id, None)

    def remove(self) -> None:
        """Removes every hook for good."""
        for module, handle, _ in self._hooks:
            handle.remove()  # the dict the hook was registered in...
            module._forward_hooks.pop(handle.id, None)  # ...and a replacement it was switched into
        self._hooks = []


def _compiled_inside(model: nn.Module) -> bool:
    """Whether ``model`` or one of its submodules is compiled already (``torch.compile(module)`` or
    ``module.compile()``): its graphs keep the hooks they were traced with, so the hooks stay."""
    if not compiler_loaded():
        return False
    return any(compiled_wrapper(m) or getattr(m, "_compiled_call_impl", None) is not None for m in model.modules())


def compiler_loaded() -> bool:
    """Whether torch.compile's frontend (dynamo) has been imported in this process: a model may be compiled."""
    return "torch._dynamo" in sys.modules


def _recomputing() -> bool:
    """True inside backward: activation checkpointing re-running a forward, already seen once."""
    return torch._C._current_graph_task_id() != -1


class _FunctionalActivationMode(TorchFunctionMode):
    """Sees ``F.relu``/``torch.sigmoid``/... calls that module hooks cannot."""

    def __init__(self, collector: ActivationCollector) -> None:
        super().__init__()
        self.on_functional = collector._guard.wrap("activation hooks", collector.on_functional)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        kind = FUNCTIONAL_ACTIVATIONS.get(func)
        if kind is not None and not torch.compiler.is_compiling():
            self.on_functional(kind, out)
        return out

"""Activation statistics from forward hooks: ReLU zero fraction, per-unit activity, saturation.

A *site* is one place an activation runs: a call of an activation module (a module called several
times in one forward gets one site per call) or a functional call (``F.relu``, ``torch.tanh``...)
inside some module's ``forward``, seen through a TorchFunctionMode and named after that module.
Statistics are computed inside the hook, before later in-place ops can change the tensor, and only
on sampled forwards; on other forwards a hook returns before touching the tensor.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.hooks import RemovableHandle

from torchhealth.collectors.base import NONFINITE, Collector, State, StepFlags, Summary, host_vector
from torchhealth.facts import ModelFacts
from torchhealth.safety import Guard
from torchhealth.layers import ROOT_NAME, activation_kind, clean_name, unit_axis, unwrap
from torchhealth.snapshot import Snapshot

MAX_SITES_PER_MODULE = 16
SATURATION_LEVEL = 0.97
"""|tanh| above this (or sigmoid within 0.03 of 0 or 1) counts as saturated."""

FUNCTIONAL_ACTIVATIONS: dict[Callable[..., Any], str] = {
    F.relu: "relu", F.relu_: "relu", torch.relu: "relu", torch.relu_: "relu",
    torch.Tensor.relu: "relu", torch.Tensor.relu_: "relu", F.relu6: "relu",
    torch.sigmoid: "sigmoid", torch.Tensor.sigmoid: "sigmoid", torch.Tensor.sigmoid_: "sigmoid",
    F.sigmoid: "sigmoid", torch.tanh: "tanh", torch.Tensor.tanh: "tanh", torch.Tensor.tanh_: "tanh", F.tanh: "tanh",
}


class Site:
    """Running statistics of one activation site, on the device of its outputs.

    A sampled forward costs five small kernels at a ReLU site (sign, sum, add; amax, add) and
    six at a sigmoid/tanh site; everything derived (zero fraction, window totals) is computed in
    the check, batched over all sites.
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
            # What this step's forwards saw, filed by ``file_step`` outside the forward: a hook that read
            # changing Python numbers (step offset, running counts) would recompile under torch.compile.
            self.step_max = torch.zeros((), device=device)  # sum of this step's output maxima (non-finite marker)
            # samples in the current dead-unit window; on the device, because whether a window closed
            # is decided on the device from the count summed over ranks (see reset_interval)
            self.window = torch.zeros((), device=device)
        self.numel = 0  # outputs seen this interval (host-side: shapes are known without a sync)
        self.step_counts: list[tuple[int, int]] = []  # (outputs, samples) per forward this step
        self._reduce_dims: tuple[int, ...] | None = None

    def observe(self, x: torch.Tensor) -> None:
        """Adds one output tensor's statistics. No host synchronization."""
        if x.device != self.fires.device:
            with torch.inference_mode(False):
                self.fires, self.positive, self.off, self.step_max, self.window = (
                    t.to(x.device) for t in (self.fires, self.positive, self.off, self.step_max, self.window))
                self.flags.to(x.device)
        # The largest output is NaN when any is, and +Inf when any is: activation outputs are never
        # -Inf (ReLU clamps it to 0, sigmoid/tanh are bounded), so one amax replaces a finiteness test.
        self.step_max.add_(x.amax())
        if self.kind == "relu":
            # ReLU outputs are >= 0, so sign() is 1 where positive and 0 where off (NaN aside, which is
            # flagged above); a float sum of it is several times faster on CPU than (x > 0).sum(dims).
            dims = self._dims(x)
            signs = x.sign()
            self.positive.add_(signs.sum(dim=dims, dtype=torch.float32) if dims is not None else signs.sum(dtype=torch.float32))
        else:
            centred = x.abs() if self.kind == "tanh" else (x - 0.5).abs()  # |2(x - 0.5)| > L  <=>  |x - 0.5| > L/2
            self.off.add_((centred > (SATURATION_LEVEL if self.kind == "tanh" else SATURATION_LEVEL / 2)).sum())
        self.step_counts.append(
            (x.numel(), x.shape[0] if self.axis == 1 or self.axis is None else x.numel() // max(self.units, 1)))

    def _dims(self, x: torch.Tensor) -> tuple[int, ...] | None:
        if self.axis is None:
            return None
        if self._reduce_dims is None or len(self._reduce_dims) != x.dim() - 1:
            self._reduce_dims = tuple(d for d in range(x.dim()) if d != self.axis)
        return self._reduce_dims


class ActivationCollector(Collector):
    """Hooks activation modules (and, optionally, functional activations) of a model."""

    def __init__(self, model: nn.Module, facts: ModelFacts, interval: int, window_samples: int,
                 functional: bool = True, guard: Guard | None = None) -> None:
        self.model = unwrap(model)
        self.facts = facts
        self.interval = interval
        self.window_samples = window_samples
        self._sampling = True
        self._compiled = False  # set once a forward runs under torch.compile: hooks then stay
        self._activation_handles: list[RemovableHandle] = []
        self._observed: list[Site] = []  # sites that saw outputs since the last ``file_step``
        self.sites: dict[tuple[str, int], Site] = {}
        self._calls: dict[str, int] = {}
        self._names = {m: clean_name(n) for n, m in self.model.named_modules()}
        self._hooked = {m for m in self._names if activation_kind(m)}
        self._functional = functional
        self._discovering = True  # the first sampled forward also records forward order
        self._functional_seen = False  # set when a functional site is found: the mode is needed again
        self._stack: list[nn.Module] = []
        self._mode: _FunctionalActivationMode | None = None
        self._global_handles: list[RemovableHandle] = []
        self._segment_key: tuple | None = None
        self._segment_cache: tuple[torch.Tensor, torch.Tensor] | None = None
        self._order: list[Site] = []
        self._window_closed: torch.Tensor | None = None
        self._guard = guard or Guard(strict=True)
        wrap = self._guard.wrap
        self.handles: list[RemovableHandle] = [
            self.model.register_forward_pre_hook(wrap("activation hooks", self._on_model_start)),
            # not switched off with the other hooks: it must always leave the function mode and global hooks
            self.model.register_forward_hook(wrap("activation cleanup", self._on_model_end), always_call=True),
        ]
        self._install_activation_hooks()

    @property
    def sampling(self) -> bool:
        """Whether the next forwards are sampled. Set by the monitor before each step's forward."""
        return self._sampling

    @sampling.setter
    def sampling(self, on: bool) -> None:
        # In eager mode the activation modules carry hooks only for sampled forwards: any forward
        # hook sends a module call down PyTorch's slow path, even one that returns at once. A
        # compiled forward keeps the hooks it was traced with (hooks changed later are not seen),
        # so once one has run the hooks stay and test ``sampling`` themselves.
        self._sampling = on
        if on or self._compiled:
            self._install_activation_hooks()
        else:
            self._remove_activation_hooks()

    def _install_activation_hooks(self) -> None:
        # unguarded: the hook tests a flag before calling guarded code; no model handles: closed, stays off
        if not self._activation_handles and self.handles:
            self._activation_handles = [m.register_forward_hook(self._on_activation) for m in self._hooked]

    def _remove_activation_hooks(self) -> None:
        for handle in self._activation_handles:
            handle.remove()
        self._activation_handles = []

    # -- hooks ---------------------------------------------------------------------------------
    def _on_model_start(self, module: nn.Module, args: Any) -> None:
        if self._mode is not None or self._global_handles:
            self._on_model_end(self.model, (), None)  # a forward interrupted by a BaseException left them
        self._calls.clear()
        if torch.compiler.is_compiling():
            self._compiled = True
        if not self.sampling or not (self._discovering or (self._functional and self._functional_seen)):
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

    def _on_model_end(self, module: nn.Module, args: Any, output: Any) -> None:
        handles, self._global_handles = self._global_handles, []
        for handle in handles:
            handle.remove()
        if self._mode is not None:
            mode, self._mode = self._mode, None
            mode.__exit__(None, None, None)
        if self.sampling:
            self._discovering = False

    def _on_any_start(self, module: nn.Module, args: Any) -> None:
        name = self._names.get(module)
        if name is not None:
            self._stack.append(module)
            if self._discovering:
                self.facts.note_forward(name)

    def _on_any_end(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._stack and self._stack[-1] is module:
            self._stack.pop()

    def _on_activation(self, module: nn.Module, args: Any, output: Any) -> None:
        if not self.sampling or self._evaluating():
            return
        if not torch.compiler.is_compiling() and _recomputing():  # folded away when traced: no graph break
            return
        self._guard.call("activation hooks", self._observe, self._names[module], activation_kind(module), output)

    def _evaluating(self) -> bool:
        """An evaluation forward (eval mode, no grad) between training steps: not training statistics.

        Both are needed: reentrant activation checkpointing runs its first pass without grad in
        training mode, and some fine-tuning trains with the model in eval mode.
        """
        return not self.model.training and not torch.is_grad_enabled()

    def on_functional(self, kind: str, output: Any) -> None:
        """Called by the function mode for each functional activation outside hooked modules."""
        owner = self._stack[-1] if self._stack else self.model
        if owner in self._hooked or self._evaluating():
            return  # an activation module calling F.relu: already seen by its own hook
        name = self._names.get(owner, ROOT_NAME)
        self._observe(f"{name}:{kind}", kind, output)

    # -- statistics ----------------------------------------------------------------------------
    def _observe(self, name: str, kind: str, output: Any) -> None:
        if not isinstance(output, torch.Tensor) or not output.is_floating_point() or output.dim() == 0 or output.numel() == 0:
            return
        call = self._calls.get(name, 0)
        self._calls[name] = call + 1
        key = (name, min(call, MAX_SITES_PER_MODULE - 1))
        site = self.sites.get(key)
        x = output.detach()
        axis = unit_axis(x.shape, channels_first=x.dim() == 3 and x.shape[1] in self.facts.conv1d_channels)
        units = x.shape[axis] if axis is not None else 1
        if site is None:
            site_name = name if key[1] == 0 else f"{name}#{key[1]}"
            site = self.sites[key] = Site(site_name, kind, units, axis, x.device, self.interval)
            self._functional_seen = self._functional_seen or ":" in name
            self.facts.activations.setdefault(site_name, kind)
            self.facts.note_forward(site_name)
        elif (axis, units) != (site.axis, site.units):
            return  # another layout (an unbatched call, a capped site of another width): skip, never mix units
        site.observe(x)
        self._observed.append(site)

    def file_step(self, offset: int) -> None:
        """Files what this step's forwards saw under the step's ``offset`` in the check interval.

        Called by the monitor once per step, outside the forward; returns at once on steps whose
        forwards were not sampled. Three launches for all sites, no host synchronization.
        """
        if not self._observed:
            return
        sites = list(dict.fromkeys(self._observed))
        self._observed.clear()
        samples = []
        for site in sites:
            site.numel += sum(numel for numel, _ in site.step_counts)
            samples.append(float(sum(n for _, n in site.step_counts)))
            site.step_counts.clear()
        torch._foreach_add_([site.window for site in sites], samples)  # numbers as kernel arguments: no upload
        slots = [site.flags.slot(offset) for site in sites]
        if slots[0] is not None:
            torch._foreach_add_(slots, [site.step_max for site in sites])
        torch._foreach_zero_([site.step_max for site in sites])

    # -- collector contract --------------------------------------------------------------------
    def state(self) -> State:
        self._order = list(self.sites.values())
        if not self._order:
            return {}
        device = self._order[0].fires.device
        counts = host_vector([float(s.numel) for s in self._order] + [float(s.kind == "relu") for s in self._order],
                             device)
        numel, relu = counts.view(2, -1)
        positive = torch.cat([s.positive.to(device) for s in self._order])
        fires = torch.cat([s.fires.to(device) for s in self._order]) + positive
        _, segment = self._segments(device)
        positive_per_site = torch.zeros(len(self._order), device=device).index_add_(0, segment, positive)
        off = torch.stack([s.off.to(device) for s in self._order]) + relu * (numel - positive_per_site)
        return {
            "off": (off, "sum"),
            "numel": (numel, "sum"),
            "fires": (fires, "sum"),
            "flags": ((~torch.isfinite(torch.stack([s.flags.flags.to(device) for s in self._order]))).float(), "sum"),
            "samples": (torch.stack([s.window.to(device) for s in self._order]), "sum"),
        }

    def summarize(self, state: dict[str, torch.Tensor]) -> Summary:
        if not state:
            return []
        names = [s.name for s in self._order]
        units, segment = self._segments(state["fires"].device)
        dead = torch.zeros(len(names), device=units.device).index_add_(0, segment, (state["fires"] == 0).float())
        # Kept for reset_interval, which restarts the windows that close here. The test runs on the
        # device, on the count summed over ranks, so that it needs no host value and every rank agrees.
        self._window_closed = state["samples"] >= self.window_samples
        return [
            ("_off_fraction", names, state["off"] / state["numel"]),
            ("dead_units", names, dead / units),
            ("_window_samples", names, state["samples"]),
            (NONFINITE, [f"activation:{n}" for n in names], StepFlags.first(state["flags"])),
        ]

    def _segments(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Units per site and the site index of every unit, as device vectors (rebuilt when sites change)."""
        key = (device, tuple(s.units for s in self._order))
        if self._segment_key != key or self._segment_cache is None:
            units = [s.units for s in self._order]
            self._segment_key = key
            self._segment_cache = (host_vector(units, device), host_vector(
                [i for i, n in enumerate(units) for _ in range(n)], device, torch.long))
        return self._segment_cache

    def finish(self, values, snapshot: Snapshot, interval_start: int) -> None:
        for site in self._order:
            off = values.pop(("_off_fraction", site.name))
            samples = values.pop(("_window_samples", site.name))
            dead = values.pop(("dead_units", site.name))
            if not math.isnan(off):
                family = "zero_fraction" if site.kind == "relu" else "saturation"
                snapshot.stats.setdefault(family, {})[site.name] = off
            if site.kind == "relu" and samples >= self.window_samples:  # the window closed at this check
                snapshot.stats.setdefault("dead_units", {})[site.name] = dead
                snapshot.window_samples = max(snapshot.window_samples, int(samples))
        super().finish(values, snapshot, interval_start)

    def reset_interval(self) -> None:
        sites = list(self.sites.values())
        if not sites:
            return
        # one launch each, not several per site
        torch._foreach_add_([s.fires for s in sites], [s.positive for s in sites])
        closed, self._window_closed = self._window_closed, None
        if closed is not None and len(closed) == len(self._order):  # windows that closed at this check restart
            _, segment = self._segments(closed.device)
            keep_site = (~closed).float()
            keep_units = keep_site[segment].split([s.units for s in self._order])
            torch._foreach_mul_([s.fires for s in self._order], _on_devices(keep_units, self._order, "fires"))
            torch._foreach_mul_([s.window for s in self._order], _on_devices(keep_site.unbind(), self._order, "window"))
        torch._foreach_zero_([s.positive for s in sites] + [s.off for s in sites] + [s.flags.flags for s in sites])
        for site in sites:
            site.numel = 0

    def close(self) -> None:
        if self._mode is not None:
            self._on_model_end(self.model, (), None)
        for handle in self.handles + self._global_handles + self._activation_handles:
            handle.remove()
        self.handles, self._global_handles, self._activation_handles = [], [], []


def _on_devices(tensors: tuple[torch.Tensor, ...], sites: list[Site], attr: str) -> list[torch.Tensor]:
    """``tensors`` moved to the device of each site's ``attr`` (a model spread over devices)."""
    return [t if t.device == getattr(s, attr).device else t.to(getattr(s, attr).device)
            for t, s in zip(tensors, sites)]


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
        if kind is not None:
            self.on_functional(kind, out)
        return out

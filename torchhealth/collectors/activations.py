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

from torchhealth.collectors.base import NONFINITE, Collector, State, StepFlags, Summary
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
    """Running statistics of one activation site, on the device of its outputs."""

    def __init__(self, name: str, kind: str, units: int, axis: int | None, device: torch.device, interval: int):
        self.name, self.kind, self.units, self.axis = name, kind, units, axis
        # normal tensors even when the first call comes from an eval under torch.inference_mode():
        # inference tensors could never be updated in place by the training forwards that follow
        with torch.inference_mode(False):
            self.fires = torch.zeros(units, device=device)  # per-unit count of positive outputs, this window
            self.off = torch.zeros((), device=device)  # zero (ReLU) or saturated outputs, this interval
            self.flags = StepFlags(interval, device)
        self.numel = 0  # outputs seen this interval (host-side: shapes are known without a sync)
        self.window_samples = 0

    def observe(self, x: torch.Tensor, offset: int) -> None:
        """Adds one output tensor's statistics. No host synchronization."""
        if x.device != self.fires.device:
            with torch.inference_mode(False):
                self.fires, self.off = self.fires.to(x.device), self.off.to(x.device)
                self.flags.flags = self.flags.flags.to(x.device)
        dims = tuple(d for d in range(x.dim()) if d != self.axis)
        per_unit_sum = x.sum(dim=dims, dtype=torch.float32) if self.axis is not None else x.sum(dtype=torch.float32)
        self.flags.mark(offset, ~torch.isfinite(per_unit_sum).all())
        if self.kind == "relu":
            positive = (x > 0).sum(dim=dims) if self.axis is not None else (x > 0).sum()
            self.fires.add_(positive)
            off = x.numel() - positive.sum()
        else:
            centred = x if self.kind == "tanh" else (x - 0.5) * 2
            off = (centred.abs() > SATURATION_LEVEL).sum()
        self.off.add_(off)
        self.numel += x.numel()
        self.window_samples += x.shape[0] if self.axis == 1 or self.axis is None else x.numel() // max(self.units, 1)


class ActivationCollector(Collector):
    """Hooks activation modules (and, optionally, functional activations) of a model."""

    def __init__(self, model: nn.Module, facts: ModelFacts, interval: int, window_samples: int,
                 functional: bool = True, guard: Guard | None = None) -> None:
        self.model = unwrap(model)
        self.facts = facts
        self.interval = interval
        self.window_samples = window_samples
        self.sampling = True
        self.offset = 0
        self.sites: dict[tuple[str, int], Site] = {}
        self._calls: dict[str, int] = {}
        self._names = {m: clean_name(n) for n, m in self.model.named_modules()}
        self._hooked = {m for m in self._names if activation_kind(m)}
        self._functional = functional
        self._discovering = True  # the first sampled forward also records forward order
        self._stack: list[nn.Module] = []
        self._mode: _FunctionalActivationMode | None = None
        self._global_handles: list[RemovableHandle] = []
        self._guard = guard or Guard(strict=True)
        wrap = self._guard.wrap
        self.handles: list[RemovableHandle] = [
            self.model.register_forward_pre_hook(wrap("activation hooks", self._on_model_start)),
            # not switched off with the other hooks: it must always leave the function mode and global hooks
            self.model.register_forward_hook(wrap("activation cleanup", self._on_model_end), always_call=True),
        ]
        for module in self._hooked:
            self.handles.append(module.register_forward_hook(wrap("activation hooks", self._on_activation)))

    # -- hooks ---------------------------------------------------------------------------------
    def _on_model_start(self, module: nn.Module, args: Any) -> None:
        if self._mode is not None or self._global_handles:
            self._on_model_end(self.model, (), None)  # a forward interrupted by a BaseException left them
        self._calls.clear()
        if not self.sampling or not (self._discovering or (self._functional and self._has_functional())):
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
        if not self.sampling or _recomputing():
            return
        name = self._names[module]
        self._observe(name, activation_kind(module), output)  # type: ignore[arg-type]

    def on_functional(self, kind: str, output: Any) -> None:
        """Called by the function mode for each functional activation outside hooked modules."""
        owner = self._stack[-1] if self._stack else self.model
        if owner in self._hooked:
            return  # an activation module calling F.relu: already seen by its own hook
        name = self._names.get(owner, ROOT_NAME)
        self._observe(f"{name}:{kind}", kind, output)

    # -- statistics ----------------------------------------------------------------------------
    def _observe(self, name: str, kind: str, output: Any) -> None:
        if not isinstance(output, torch.Tensor) or not output.is_floating_point() or output.dim() == 0:
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
            self.facts.activations.setdefault(site_name, kind)
            self.facts.note_forward(site_name)
        elif (axis, units) != (site.axis, site.units):
            return  # another layout (an unbatched call, a capped site of another width): skip, never mix units
        site.observe(x, self.offset)

    def _has_functional(self) -> bool:
        return any(":" in name for name, _ in self.sites)

    # -- collector contract --------------------------------------------------------------------
    def state(self) -> State:
        self._order = list(self.sites.values())
        if not self._order:
            return {}
        device = self._order[0].fires.device
        return {
            "off": (torch.stack([s.off.to(device) for s in self._order]), "sum"),
            "numel": (torch.tensor([float(s.numel) for s in self._order], device=device), "sum"),
            "fires": (torch.cat([s.fires.to(device) for s in self._order]), "sum"),
            "flags": (torch.stack([s.flags.flags.to(device) for s in self._order]), "sum"),
            "samples": (torch.tensor([float(s.window_samples) for s in self._order], device=device), "sum"),
        }

    def summarize(self, state: dict[str, torch.Tensor]) -> Summary:
        if not state:
            return []
        names = [s.name for s in self._order]
        units = torch.tensor([s.units for s in self._order], device=state["fires"].device)
        segment = torch.repeat_interleave(torch.arange(len(names), device=units.device), units)
        dead = torch.zeros(len(names), device=units.device).index_add_(0, segment, (state["fires"] == 0).float())
        return [
            ("_off_fraction", names, state["off"] / state["numel"]),
            ("dead_units", names, dead / units),
            ("_window_samples", names, state["samples"]),
            (NONFINITE, [f"activation:{n}" for n in names], StepFlags.first(state["flags"])),
        ]

    def finish(self, values, snapshot: Snapshot, interval_start: int) -> None:
        for site in self._order:
            off = values.pop(("_off_fraction", site.name))
            samples = values.pop(("_window_samples", site.name))
            dead = values.pop(("dead_units", site.name))
            if not math.isnan(off):
                family = "zero_fraction" if site.kind == "relu" else "saturation"
                snapshot.stats.setdefault(family, {})[site.name] = off
            if site.kind == "relu" and samples >= self.window_samples:
                snapshot.stats.setdefault("dead_units", {})[site.name] = dead
                snapshot.window_samples = max(snapshot.window_samples, int(samples))
                site.fires.zero_()
                site.window_samples = 0
        super().finish(values, snapshot, interval_start)

    def reset_interval(self) -> None:
        for site in self.sites.values():
            site.off.zero_()
            site.numel = 0
            site.flags.reset()

    def close(self) -> None:
        if self._mode is not None:
            self._on_model_end(self.model, (), None)
        for handle in self.handles + self._global_handles:
            handle.remove()
        self.handles, self._global_handles = [], []


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

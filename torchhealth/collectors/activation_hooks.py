"""The activation collector's hooks: when they are on, what they see, and how they behave under torch.compile.

Statistics are computed inside the hooks, before later in-place ops can change the tensor, and only
on sampled forwards; on other forwards activation modules carry no hook at all (any forward hook
sends a module call down PyTorch's slow path). The first sampled forward also records forward order
(global module hooks), and functional activations (``F.relu``...) are seen through a
TorchFunctionMode. What a hook sees goes to the collector (``ActivationCollector._observe``); this
file holds no statistic.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.hooks import RemovableHandle

from torchhealth.facts import ModelFacts
from torchhealth.layers import ROOT_NAME, activation_kind, clean_name, compiled_wrapper
from torchhealth.safety import Guard

logger = logging.getLogger("torchhealth")

UNSEEN_FORWARDS_BEFORE_WARNING = 3
"""Sampled steps in a row whose forwards ran none of the activation hooks before the monitor says so."""

FUNCTIONAL_ACTIVATIONS: dict[Callable[..., Any], str] = {
    F.relu: "relu", F.relu_: "relu", torch.relu: "relu", torch.relu_: "relu",
    torch.Tensor.relu: "relu", torch.Tensor.relu_: "relu", F.relu6: "relu",
    torch.sigmoid: "sigmoid", torch.Tensor.sigmoid: "sigmoid", torch.Tensor.sigmoid_: "sigmoid",
    F.sigmoid: "sigmoid", torch.tanh: "tanh", torch.Tensor.tanh: "tanh", torch.Tensor.tanh_: "tanh", F.tanh: "tanh",
}


class ActivationHooks:
    """Puts an activation collector's hooks on a model, switches them for sampled forwards, removes them.

    Args:
        collector: Gets what the hooks see: ``_observe(name, kind, output)`` for each activation
            output of a sampled training forward, ``_calls`` cleared at each sampled forward's start.
        model: The model (wrappers looked through).
        facts: Its ``ModelFacts``: forward order, fp16 autocast.
        guard: Where hook failures are reported (part ``"activation hooks"``).
        functional: Also watch functional activations.
    """

    def __init__(self, collector: Any, model: nn.Module, facts: ModelFacts, guard: Guard, functional: bool) -> None:
        self.collector = collector
        self.model = model
        self.facts = facts
        self.guard = guard
        self._sampling = True
        # set once a forward runs under torch.compile, or when part of the model is compiled already: hooks then stay
        self._compiled = compiled_inside(model)
        self._closed = False
        self._start_handle: RemovableHandle | None = None  # the model's pre-forward hook
        self._sampled_hooks: SwitchedHooks | None = None  # the model's post-forward hook and the activation hooks
        self.names = {m: clean_name(n) for n, m in model.named_modules()}
        self.hooked = {m: kind for m in self.names if (kind := activation_kind(m))}  # module -> kind
        self._functional = functional
        self._discovering = True  # the first sampled forward also records forward order
        self.functional_seen = False  # set when a functional site is found: the mode is needed again
        self._stack: list[nn.Module] = []
        self._mode: FunctionalActivationMode | None = None
        self._global_handles: list[RemovableHandle] = []
        self._hooks_ran = False  # an activation hook ran in this step's sampled forwards
        self._unseen_forwards = 0  # sampled steps in a row in which none ran
        self._warned_unseen = False
        self._update()

    @property
    def sampling(self) -> bool:
        """Whether the next forwards are sampled."""
        return self._sampling

    @sampling.setter
    def sampling(self, on: bool) -> None:
        self._sampling = on
        self._update()

    def prepare(self, sampling: bool) -> None:
        """Sets whether the next forwards are sampled, with the hooks that needs (called every step: cheap)."""
        if sampling != self._sampling or (self._start_handle is None and compiler_loaded()):
            self.sampling = sampling

    def ready_for_unsampled(self) -> bool:
        """Whether unsampled steps need nothing from the hooks: not sampling, and ``prepare(False)``
        would change nothing (the compile-safe pre-hook is in place, or not needed because
        torch.compile is not loaded, or the hooks are closed)."""
        return not self._sampling and (self._start_handle is not None or self._closed or not compiler_loaded())

    def end_step(self) -> None:
        """The end of a step: notes whether its sampled forwards ran any activation hook."""
        if self._sampling:
            if self._hooks_ran:
                self._unseen_forwards = 0
            else:
                self._note_unseen_forward()
            self._hooks_ran = False

    def close(self) -> None:
        """Removes every hook for good; a hook that outlived it (a copy of the model's) records nothing."""
        self._closed = True
        self._sampling = False
        self._end_interrupted_forward()
        if self._sampled_hooks is not None:
            self._sampled_hooks.remove()
            self._sampled_hooks = None
        if self._start_handle is not None:
            self._start_handle.remove()
            self._start_handle = None

    def _update(self) -> None:
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
            hooks = self._sampled_hooks = SwitchedHooks()
            hooks.add(self.model, self._on_model_end_guarded, always_call=True)
            for module, kind in self.hooked.items():  # unguarded: they test a flag before calling guarded code
                hooks.add(module, ActivationHook(self, self.names[module], kind))
        self._sampled_hooks.switch(True)

    # -- hooks ---------------------------------------------------------------------------------
    def _end_interrupted_forward(self) -> None:
        if self._mode is not None or self._global_handles:
            self._on_model_end(self.model, (), None)  # a forward interrupted by a BaseException left them

    def _on_model_start(self, module: nn.Module, args: Any) -> None:
        # unguarded: on the usual (unsampled) forward it only tests flags, before any guarded code
        if not self._compiled and torch.compiler.is_compiling():
            self._compiled = True
        if self._sampling or self._mode is not None or self._global_handles:
            self.guard.call("activation hooks", self._start_sampled_forward)

    def _start_sampled_forward(self) -> None:
        self._end_interrupted_forward()
        if not self._sampling:
            return
        self.collector._calls.clear()
        if not self.facts.under_fp16_autocast and not torch.compiler.is_compiling():  # for the AMP hint
            self.facts.under_fp16_autocast = any(
                torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.float16
                for device in ("cuda", "cpu"))
        # Not again once part of the model is compiled: its graphs guard on the global hooks and the
        # function mode, and new ones at every sampled forward would recompile it every time.
        if not (self._discovering or (self._functional and self.functional_seen and not self._compiled)):
            return
        if torch.compiler.is_compiling():
            # Global hooks and a function mode cannot be set up inside a compiled graph (a graph
            # break); under torch.compile only activation modules are watched (docs/performance.md).
            return
        self._stack = [self.model]
        wrap = self.guard.wrap
        self._global_handles = [
            nn.modules.module.register_module_forward_pre_hook(wrap("activation hooks", self._on_any_start)),
            nn.modules.module.register_module_forward_hook(wrap("activation hooks", self._on_any_end), always_call=True),
        ]
        if self._functional:
            self._mode = FunctionalActivationMode(self)
            self._mode.__enter__()

    def _on_model_end_guarded(self, module: nn.Module, args: Any, output: Any) -> None:
        # A guarded part of its own, not switched off with the other hooks: it must always leave the
        # function mode and global hooks. A method, not a closure: a deep copy of the model (an EMA
        # copy) then ends the forwards of the copy of these hooks that began them.
        self.guard.call("activation cleanup", self._on_model_end, module, args, output)

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
        name = self.names.get(module)
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
        elif recomputing():  # folded away when traced: no graph break
            return
        if self._evaluating():
            return
        self.guard.call("activation hooks", self.collector._observe, name, kind, output)

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
        if owner in self.hooked or self._evaluating():
            return  # an activation module calling F.relu: already seen by its own hook
        name = self.names.get(owner, ROOT_NAME)
        self.collector._observe(f"{name}:{kind}", kind, output)

    def _note_unseen_forward(self) -> None:
        """Says once when the activation hooks have run on none of several sampled steps in a row.

        The usual cause is a compiled graph traced without the monitor's hooks: dynamo does not
        guard on module hooks (``skip_nnmodule_hook_guards``), so a graph traced for another model
        of the same class, or for this model before the monitor attached, can run in place of the
        one with the hooks.
        """
        if self._warned_unseen or self._closed or not self.hooked:
            return
        self._unseen_forwards += 1
        if self._unseen_forwards < UNSEEN_FORWARDS_BEFORE_WARNING:
            return
        self._warned_unseen = True
        names = sorted(set(self.names[m] for m in self.hooked))
        logger.warning(
            "torchhealth: the hooks on the model's activation modules (%s%s) ran on none of the last %d sampled "
            "steps, so no activation statistics are being recorded. If the model or part of it is compiled, a graph "
            "that torch.compile traced without the monitor's hooks (for another model of the same class, or before "
            "the monitor attached) may be running in its place, because dynamo does not guard on module hooks: set "
            "torch._dynamo.config.skip_nnmodule_hook_guards = False before the first compiled call. Otherwise the "
            "training forward does not call these modules.",
            ", ".join(repr(name) for name in names[:3]), ", ..." if len(names) > 3 else "", self._unseen_forwards)


class ActivationHook:
    """The forward hook of one activation module, its name and kind bound in.

    A compiled forward then traces no lookup in a dict keyed by modules: dynamo fails on one that
    holds the module it is tracing, as the collector's do when part of the model is compiled. An
    object rather than a closure, so that a deep copy of the model (an EMA or teacher copy made
    after attaching) gets hooks that feed a copy of the collector, as bound methods did, instead
    of this one.
    """

    def __init__(self, hooks: ActivationHooks, name: str, kind: str) -> None:
        self.hooks, self.name, self.kind = hooks, name, kind

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        self.hooks._on_activation(self.name, self.kind, output)


class SwitchedHooks:
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


def compiled_inside(model: nn.Module) -> bool:
    """Whether ``model`` or one of its submodules is compiled already (``torch.compile(module)`` or
    ``module.compile()``): its graphs keep the hooks they were traced with, so the hooks stay."""
    if not compiler_loaded():
        return False
    return any(compiled_wrapper(m) or getattr(m, "_compiled_call_impl", None) is not None for m in model.modules())


def compiler_loaded() -> bool:
    """Whether torch.compile's frontend (dynamo) has been imported in this process: a model may be compiled."""
    return "torch._dynamo" in sys.modules


def recomputing() -> bool:
    """True inside backward: activation checkpointing re-running a forward, already seen once."""
    return torch._C._current_graph_task_id() != -1


class FunctionalActivationMode(TorchFunctionMode):
    """Sees ``F.relu``/``torch.sigmoid``/... calls that module hooks cannot."""

    def __init__(self, hooks: ActivationHooks) -> None:
        super().__init__()
        self.on_functional = hooks.guard.wrap("activation hooks", hooks.on_functional)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        kind = FUNCTIONAL_ACTIVATIONS.get(func)
        if kind is not None and not torch.compiler.is_compiling():
            self.on_functional(kind, out)
        return out

"""AMP's GradScaler as the monitor meets it: unscaled gradients, and steps the scaler skips.

A GradScaler multiplies the loss by its scale, so gradients are scaled until ``scaler.unscale_``;
when the scaled gradients overflow, ``scaler.step`` skips ``optimizer.step()`` and lowers the scale.
Those skips are how AMP finds its scale, not exploding gradients, so the monitor counts them
(``Snapshot.skipped_steps``) and does not read their gradients.
"""

from __future__ import annotations

from typing import Any, Callable

import torch


try:
    from torch.amp.grad_scaler import OptState
except ImportError:  # torch < 2.3
    from torch.cuda.amp.grad_scaler import OptState


def _optimizer_state(scaler: Any, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
    states = getattr(scaler, "_per_optimizer_states", None)
    return states.get(id(optimizer)) if isinstance(states, dict) else None


def unscale_and_check(scaler: Any, optimizer: torch.optim.Optimizer) -> bool:
    """Makes sure ``optimizer``'s gradients are unscaled; returns True if the scaler will skip this step.

    Call it after backward and before ``scaler.step(optimizer)``. It unscales only when nothing
    did yet (``unscale_`` may run once per step), so ``scaler.step`` works as before. Reading the
    overflow flag synchronizes with the device, as ``scaler.step`` itself does right after.

    Args:
        scaler: A ``torch.amp.GradScaler`` (or the older ``torch.cuda.amp.GradScaler``), or None.
        optimizer: The optimizer about to step.
    """
    if scaler is None or not scaler.is_enabled():
        return False
    state = _optimizer_state(scaler, optimizer)
    if state is None or state.get("stage") is OptState.READY:
        scaler.unscale_(optimizer)
        state = _optimizer_state(scaler, optimizer)
    found = state.get("found_inf_per_device", {}) if state else {}
    return bool(sum(float(v.item()) for v in found.values()))


def gradient_scale(scaler: Any, optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
    """The factor ``optimizer``'s gradients are multiplied by now, as a device tensor; None when 1.

    For ``monitor.step`` called between ``scaler.scale(loss).backward()`` and ``scaler.step``: the
    gradients are scaled unless the loop already called ``scaler.unscale_(optimizer)``. The monitor
    divides the norms it computes by this factor instead of unscaling the gradients itself, which
    would make the loop's own later ``unscale_`` (for clipping) raise. No host synchronization.
    """
    if scaler is None or not scaler.is_enabled():
        return None
    state = _optimizer_state(scaler, optimizer)
    if state is not None and state.get("stage") is OptState.UNSCALED:
        return None
    scale = getattr(scaler, "_scale", None)
    if isinstance(scale, torch.Tensor):
        return scale
    return None if scale is None else torch.tensor(float(scaler.get_scale()))


def overflow_hint(snapshot: Any) -> str | None:
    """What to tell a loop under fp16 autocast that did not pass its GradScaler, when ``snapshot``
    looks like the scaler's search for its scale (non-finite gradients, finite loss and forward); else None."""
    sources = snapshot.nonfinite
    if not sources or not all(source.startswith("grad:") for source in sources):
        return None
    first = min(sources.values())
    return (f"torchhealth: gradients were non-finite at step {first} while the loss and activations were finite, "
            "in a run under fp16 autocast. With a GradScaler that is how it finds its scale (it skips those "
            "steps), and the monitor also read every gradient multiplied by the scale. Pass the scaler: "
            "torchhealth.Monitor(model, optimizer, scaler=scaler), or torchhealth.watch(model, optimizer, "
            "scaler=scaler); then skipped steps are counted and gradients read unscaled.")


def check_scaler(scaler: Any) -> None:
    """Raises TypeError unless ``scaler`` looks like a GradScaler (has ``step``, ``unscale_``, ``is_enabled``)."""
    if not all(callable(getattr(scaler, name, None)) for name in ("step", "unscale_", "is_enabled")):
        raise TypeError(f"scaler must be a torch.amp.GradScaler, got {type(scaler).__name__}")


class ScalerStepWatch:
    """Wraps one GradScaler's ``step`` to tell steps it skipped from steps it took.

    ``on_skip()`` is called after each ``scaler.step(optimizer)`` that did not call
    ``optimizer.step()``. Host-side bookkeeping only: no device synchronization is added.

    Args:
        scaler: The GradScaler the training loop steps through.
        optimizer: The watched optimizer; steps of other optimizers are ignored.
        on_skip: Called once per skipped step.
    """

    def __init__(self, scaler: Any, optimizer: torch.optim.Optimizer, on_skip: Callable[[], None]) -> None:
        check_scaler(scaler)
        self.scaler = scaler
        self.optimizer = optimizer
        self.on_skip = on_skip
        self.stepped = False
        self._original = scaler.step
        self._handle = optimizer.register_step_pre_hook(self._mark_stepped)
        scaler.step = self._step  # instance attribute: only this scaler, undone by close()

    def _mark_stepped(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.stepped = True

    def _step(self, optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
        self.stepped = False
        result = self._original(optimizer, *args, **kwargs)
        if optimizer is self.optimizer and self.scaler.is_enabled() and not self.stepped:
            self.on_skip()
        return result

    def close(self) -> None:
        """Restores the scaler's own ``step`` and removes the optimizer hook. Safe to call twice."""
        if self.scaler.__dict__.get("step") == self._step:
            del self.scaler.step
        self._handle.remove()


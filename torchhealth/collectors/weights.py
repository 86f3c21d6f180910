"""Weight norms and measured update-to-weight ratios ||W_after - W_before|| / ||W_before||."""

from __future__ import annotations

import numpy as np
import torch

from torchhealth.collectors.base import Arrays, AttachContext, Collector, State, file_values, host_values
from torchhealth.collectors.gradients import (LayerIndex, ParamEntry, current_device, local_tensor, sharded,
                                              squared_norms)
from torchhealth.records import Snapshot


class WeightCollector(Collector):
    """Per-layer weight norms, and the update ratio of the optimizer step before the check.

    The monitor reads it on log steps only. The update is measured, not estimated from
    ``lr * grad``, so it is right for Adam and friends: ``remember_weights()`` copies the weights on
    the step before (before the optimizer steps); the check compares them with the weights it
    finds. The copy lives in buffers kept between checks and the difference is taken in place, so
    a check allocates no parameter-sized memory (fresh allocations cost page faults on CPU and
    allocator traffic on GPU). At ``attach`` it takes the monitor's parameters and ``log_every``; a
    loop without an optimizer measures no updates and gets no weight collector.
    """

    name = "weights"

    def __init__(self, params: list[ParamEntry] | None = None, device: torch.device | None = None,
                 copies: list[float] | None = None, log_every: int = 1) -> None:
        self.log_every = log_every
        self._just_remembered = False  # by the last full step: its update is measured at the next check
        if params is not None:
            self._bind(params, device or torch.device("cpu"), copies)

    def attach(self, context: AttachContext) -> bool:
        if context.optimizer is None:
            return False
        self.log_every = context.options.log_every
        if not hasattr(self, "params"):
            self._bind(context.params, context.device, context.copies)
        return True

    def _bind(self, params: list[ParamEntry], device: torch.device, copies: list[float] | None) -> None:
        self.params = params
        self.device = device
        self.index = LayerIndex(params, copies)
        self._before: list[torch.Tensor] | None = None
        self._buffers: list[torch.Tensor] = []
        self._weights = [p for _, _, p in params]
        self._sharded = sharded(self._weights)

    def _local_weights(self) -> list[torch.Tensor]:
        """The weights, or their rank-local shards (used under ``torch.no_grad()``: no detach per tensor)."""
        return [local_tensor(p) for p in self._weights] if self._sharded else self._weights

    def remember_weights(self) -> None:
        """Copies the current weights (rank-local shards) for the next update-ratio measurement."""
        if not self.params:
            return
        with torch.no_grad():
            local = self._local_weights()
            if _layout(self._buffers) != _layout(local):
                with torch.inference_mode(False):  # kept buffers stay writable outside an inference_mode() block
                    self._buffers = [t.clone() for t in local]  # first time, or a model moved or cast since
            else:
                torch._foreach_copy_(self._buffers, local)
        self._before = self._buffers

    def forget_update(self) -> None:
        """Drops the weights ``remember_weights`` copied: the optimizer step after it did not run."""
        self._before = None

    # Weight norms and update ratios are read on log steps only: they cost several passes over the
    # parameters, and no detector needs them between two TensorBoard writes.
    def reads(self, logging: bool) -> bool:
        return logging

    def idle_steps(self, step: int) -> int:
        return (-step - 1) % self.log_every  # the step before a log step copies the weights

    def on_step(self, loss: object, offset: int) -> bool:
        self._just_remembered = False
        return False

    def after_step(self, step: int) -> None:
        if (step + 1) % self.log_every == 0:
            self.remember_weights()
            self._just_remembered = True

    def on_skipped_step(self, recorded: bool) -> None:
        if recorded and self._just_remembered:
            self.forget_update()  # that step copied the weights to measure its update, which never came

    def state(self) -> State:
        if not self.params:
            return {}
        self.device = current_device(self.params, self.device)
        # The same entries at every check, measured or not (``measured`` says which): under
        # torch.distributed the layout of the reduced state is agreed once, not at each change.
        with torch.no_grad():
            local = self._local_weights()
            w = squared_norms(local, self.device)
            before, self._before = self._before, None
            # a model moved or cast between remembering and now: skip this one update measurement
            if before is not None and _layout(local) == _layout(before):
                w0 = squared_norms(before, self.device)
                torch._foreach_sub_(before, local)  # before - after: the update's negative, same norm
                dw, measured = squared_norms(before, self.device), 1.0
            else:
                w0 = dw = torch.zeros_like(w)
                measured = 0.0
        return {"w": (w, "sum"), "w0": (w0, "sum"), "dw": (dw, "sum"), "measured": (host_values([measured]), "mean")}

    def finish(self, state: Arrays, snapshot: Snapshot, interval_start: int) -> None:
        if "w" not in state:
            return
        index = self.index
        file_values(snapshot, "weight_norm", index.layers, np.sqrt(index.per_layer(index.whole(state["w"]))))
        if state.get("measured", [0])[0] > 0:
            update = np.sqrt(index.per_layer(index.whole(state["dw"])))
            before = np.sqrt(index.per_layer(index.whole(state["w0"])))
            file_values(snapshot, "update_ratio", index.layers, update / np.maximum(before, np.finfo(np.float32).tiny))

    def close(self) -> None:
        self._before = None
        self._buffers = []


def _layout(tensors: list[torch.Tensor]) -> list[tuple[torch.Size, torch.dtype, int]]:
    """Shape, dtype and device index of each tensor (``get_device()``: no torch.device object per tensor)."""
    return [(t.shape, t.dtype, t.get_device()) for t in tensors]

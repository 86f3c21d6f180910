"""Weight norms and measured update-to-weight ratios ||W_after - W_before|| / ||W_before||."""

from __future__ import annotations

import torch

from torchhealth.collectors.base import Collector, State, Summary
from torchhealth.collectors.gradients import LayerSum, ParamEntry, current_placement, local_tensor, sharded_state


class WeightCollector(Collector):
    """Per-layer weight norms on check steps, and the update ratio of the optimizer step before.

    The update is measured, not estimated from ``lr * grad``, so it is right for Adam and friends:
    ``remember_weights()`` copies the weights on the step before a check (before the optimizer
    steps); the check compares them with the weights it finds. The copy lives in buffers kept
    between checks and the difference is taken in place, so a check allocates no parameter-sized
    memory (fresh allocations cost page faults on CPU and allocator traffic on GPU).
    """

    def __init__(self, params: list[ParamEntry], device: torch.device, copies: list[float] | None = None) -> None:
        self.params = params
        self.device = device
        self.layer_sum = LayerSum(params)
        self.copies = torch.tensor(copies or [1.0] * len(params), device=device)
        self._before: list[torch.Tensor] | None = None
        self._buffers: list[torch.Tensor] = []

    def _weights(self) -> list[torch.Tensor]:
        return [p.detach() for _, _, p in self.params]

    def remember_weights(self) -> None:
        """Copies the current weights (rank-local shards) for the next update-ratio measurement."""
        if not self.params:
            return
        local = [local_tensor(w) for w in self._weights()]
        if [(b.shape, b.dtype, b.device) for b in self._buffers] != [(t.shape, t.dtype, t.device) for t in local]:
            with torch.inference_mode(False):  # kept buffers stay writable outside an inference_mode() block
                self._buffers = [t.clone() for t in local]  # first time, or a model moved or cast since
        else:
            torch._foreach_copy_(self._buffers, local)
        self._before = self._buffers

    def state(self) -> State:
        if not self.params:
            return {}
        weights = self._weights()
        self.device, self.copies = current_placement(self.params, self.device, self.copies)
        state = sharded_state("w", weights, self.copies, self.device)
        if self._before is not None:
            local = [local_tensor(w) for w in weights]
            # a model moved or cast between remembering and now: skip this one update measurement
            if [(t.shape, t.device, t.dtype) for t in local] == [(t.shape, t.device, t.dtype) for t in self._before]:
                state.update(sharded_state("w0", self._before, self.copies, self.device))
                torch._foreach_sub_(self._before, local)  # before - after: the update's negative, same norm
                state.update(sharded_state("dw", self._before, self.copies, self.device))
            self._before = None
        return state

    def summarize(self, state: dict[str, torch.Tensor]) -> Summary:
        if not state:
            return []
        layers = self.layer_sum.layers
        out: Summary = [("weight_norm", layers, self.layer_sum(state["w"]).sqrt())]
        if "dw" in state:
            update = self.layer_sum(state["dw"]).sqrt()
            before = self.layer_sum(state["w0"]).sqrt()
            out.append(("update_ratio", layers, update / before.clamp_min(torch.finfo(torch.float32).tiny)))
        return out

    def close(self) -> None:
        self._before = None
        self._buffers = []


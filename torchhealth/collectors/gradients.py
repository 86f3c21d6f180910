"""Gradient norms per parameter, per layer and in total, read from ``.grad`` after backward."""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from torchhealth.collectors.base import Collector, State, Summary, host_vector
from torchhealth.snapshot import TOTAL, Snapshot

ParamEntry = tuple[str, str, torch.nn.Parameter]


def squared_norms(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Squared L2 norms of ``tensors`` as one float32 vector on ``device``.

    One ``torch._foreach_norm`` launch per device for dense tensors; sparse tensors are coalesced
    first (duplicate indices add up). No host synchronization.
    """
    if not tensors:
        return torch.zeros(0, device=device)
    out: list[torch.Tensor | None] = [None] * len(tensors)
    groups: dict[torch.device, list[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        if t.is_sparse:
            out[i] = t.coalesce().values().float().norm().to(device)
        else:
            groups[t.device].append(i)
    for dev, idx in groups.items():
        norms = torch._foreach_norm([tensors[i] for i in idx], 2, dtype=torch.float32)
        for i, n in zip(idx, norms):
            out[i] = n if dev == device else n.to(device, non_blocking=True)
    return torch.stack(out).square()  # type: ignore[arg-type]


def local_tensor(t: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The rank-local part of ``t`` and whether ``t`` is sharded across ranks (FSDP's DTensor)."""
    if type(t) is torch.Tensor:  # the common case, without hasattr's failed lookups
        return t, False
    if hasattr(t, "to_local") and hasattr(t, "placements"):
        sharded = any(p.is_shard() for p in t.placements)
        return t.to_local(), sharded
    return t, False


def sharded_state(name: str, tensors: list[torch.Tensor], device: torch.device) -> State:
    """Squared norms of ``tensors`` as reducible state.

    Replicated tensors (plain, or DDP's already-averaged gradients) reduce by mean; shards of
    FSDP's DTensors reduce by sum, so the reduced value is the full tensor's squared norm.
    """
    local = [local_tensor(t) for t in tensors]
    sq = squared_norms([t for t, _ in local], device)
    if not any(s for _, s in local):
        return {name: (sq, "mean")}
    mask = host_vector([s for _, s in local], device, torch.bool)
    return {name: (torch.where(mask, 0.0, sq), "mean"), name + "_sharded": (torch.where(mask, sq, 0.0), "sum")}


def combined(state: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """Reassembles the squared norms that ``sharded_state`` split by reduction."""
    return state[name] + state[name + "_sharded"] if name + "_sharded" in state else state[name]


class LayerSum:
    """Sums per-parameter values into per-layer values on the device (one ``index_add_``)."""

    def __init__(self, params: list[ParamEntry]) -> None:
        self.layers = list(dict.fromkeys(layer for _, layer, _ in params))
        position = {layer: i for i, layer in enumerate(self.layers)}
        self._index_list = [position[layer] for _, layer, _ in params]
        self._index: dict[torch.device, torch.Tensor] = {}

    def __call__(self, per_param: torch.Tensor) -> torch.Tensor:
        index = self._index.get(per_param.device)
        if index is None:
            index = self._index[per_param.device] = host_vector(self._index_list, per_param.device, torch.long)
        return torch.zeros(len(self.layers), device=per_param.device).index_add_(0, index, per_param)


def _select(values: torch.Tensor, index: list[int]) -> torch.Tensor:
    """``values[index]``, skipping the gather (and its host-to-device index copy) when all are kept."""
    if len(index) == values.numel():
        return values
    return values.index_select(0, host_vector(index, values.device, torch.long))


class GradientCollector(Collector):
    """Per-parameter, per-layer and total gradient L2 norms, computed only on check steps."""

    def __init__(self, params: list[ParamEntry], device: torch.device, per_parameter: bool = True) -> None:
        self.params = params
        self.device = device
        self.per_parameter = per_parameter
        self.layer_sum = LayerSum(params)
        self._present: list[bool] = []

    def state(self) -> State:
        grads, self._present = [], []
        for _, _, p in self.params:
            g = p.grad
            self._present.append(g is not None)
            grads.append(g if g is not None else torch.zeros((), device=self.device))
        return sharded_state("sq", grads, self.device)

    def summarize(self, state: dict[str, torch.Tensor]) -> Summary:
        if not any(self._present):
            return []
        sq = combined(state, "sq")
        layers_with_grad = {layer for (_, layer, _), present in zip(self.params, self._present) if present}
        keep = [i for i, layer in enumerate(self.layer_sum.layers) if layer in layers_with_grad]
        layer_norms = self.layer_sum(sq).sqrt()
        out: Summary = [
            ("grad_norm", [self.layer_sum.layers[i] for i in keep], _select(layer_norms, keep)),
            ("grad_norm", [TOTAL], sq.sum().sqrt().reshape(1)),
        ]
        if self.per_parameter:
            idx = [i for i, present in enumerate(self._present) if present]
            out.append(("param_grad_norm", [self.params[i][0] for i in idx], _select(sq, idx).sqrt()))
        return out

    def finish(self, values, snapshot: Snapshot, interval_start: int) -> None:
        super().finish(values, snapshot, interval_start)
        for (family, layer), value in values.items():
            if family == "grad_norm" and layer != TOTAL and not math.isfinite(value):
                snapshot.nonfinite.setdefault(f"grad:{layer}", snapshot.step)

"""Gradient norms per parameter, per layer and in total, read from ``.grad`` after backward."""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from torchhealth.collectors.base import Collector, State, Summary, host_vector
from torchhealth.snapshot import TOTAL, Snapshot

ParamEntry = tuple[str, str, torch.nn.Parameter]
PRESENT = "_grad_present"
"""Private family: how many parameters of a layer had a gradient on any rank (0: report nothing)."""


def squared_norms(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Squared L2 norms of ``tensors`` as one float32 vector on ``device``.

    One ``torch._foreach_norm`` launch per device for dense tensors; sparse tensors are coalesced
    first (duplicate indices add up). No host synchronization.
    """
    if not tensors:
        return torch.zeros(0, device=device)
    out: list[torch.Tensor | None] = [None] * len(tensors)
    groups: dict[tuple[torch.device, bool], list[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        if t.is_sparse:
            out[i] = t.coalesce().values().float().norm().to(device)
        else:
            groups[t.device, t.dtype == torch.float64].append(i)
    for (dev, wide), idx in groups.items():
        # float64 cannot be narrowed by the norm kernel's dtype argument (a model.double() after attaching)
        norms = torch._foreach_norm([tensors[i] for i in idx], 2, **({} if wide else {"dtype": torch.float32}))
        for i, n in zip(idx, norms):
            n = n.float()
            out[i] = n if dev == device else n.to(device, non_blocking=True)
    return torch.stack(out).square()  # type: ignore[arg-type]


def current_placement(params: list[ParamEntry], device: torch.device,
                      copies: torch.Tensor) -> tuple[torch.device, torch.Tensor]:
    """Where the parameters are now, and ``copies`` moved there (once) for a model moved after attaching."""
    now = params[0][2].device if params else device
    return now, copies if copies.device == now else copies.to(now)


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """The rank-local part of ``t`` (the shard of FSDP2's DTensor, else ``t`` itself)."""
    if type(t) is torch.Tensor:  # the common case, without hasattr's failed lookups
        return t
    return t.to_local() if hasattr(t, "to_local") and hasattr(t, "placements") else t


def sharded_state(name: str, tensors: list[torch.Tensor], copies: torch.Tensor, device: torch.device) -> State:
    """Squared norms of the rank-local parts of ``tensors`` as state that reduces by sum.

    Each is divided by ``copies`` (how many ranks hold that local part, see
    ``distributed.replica_counts``), so the sum over ranks is the whole tensor's squared norm:
    the mean for replicated tensors such as DDP's averaged gradients, the sum of the shards' for FSDP.
    """
    sq = squared_norms([local_tensor(t) for t in tensors], device)
    return {name: (sq / copies.to(sq.device, non_blocking=True), "sum")}


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


class GradientCollector(Collector):
    """Per-parameter, per-layer and total gradient L2 norms, computed only on check steps."""

    def __init__(self, params: list[ParamEntry], device: torch.device, per_parameter: bool = True,
                 copies: list[float] | None = None) -> None:
        self.params = params
        self.device = device
        self.per_parameter = per_parameter
        self.layer_sum = LayerSum(params)
        self.copies = torch.tensor(copies or [1.0] * len(params), device=device)

    def state(self) -> State:
        self.device, self.copies = current_placement(self.params, self.device, self.copies)
        device = self.device
        grads = [p.grad if p.grad is not None else torch.zeros((), device=device) for _, _, p in self.params]
        # Which parameters have a gradient is reduced too: under FSDP a rank with an empty shard has none.
        present = host_vector([float(p.grad is not None) for _, _, p in self.params], device)
        return {**sharded_state("sq", grads, self.copies, device), "present": (present, "sum")}

    def summarize(self, state: dict[str, torch.Tensor]) -> Summary:
        if not self.params:
            return []
        sq, present = state["sq"], state["present"]
        out: Summary = [
            ("grad_norm", self.layer_sum.layers, self.layer_sum(sq).sqrt()),
            ("grad_norm", [TOTAL], sq.sum().sqrt().reshape(1)),
            (PRESENT, self.layer_sum.layers, self.layer_sum(present)),
            (PRESENT, [TOTAL], present.sum().reshape(1)),
        ]
        if self.per_parameter:
            names = [name for name, _, _ in self.params]
            out += [("param_grad_norm", names, sq.sqrt()), (PRESENT, names, present)]
        return out

    def finish(self, values, snapshot: Snapshot, interval_start: int) -> None:
        present = {name for (family, name), count in values.items() if family == PRESENT and count > 0}
        values = {(family, name): value for (family, name), value in values.items()
                  if family != PRESENT and name in present}
        super().finish(values, snapshot, interval_start)
        for (family, layer), value in values.items():
            if family == "grad_norm" and layer != TOTAL and not math.isfinite(value):
                snapshot.nonfinite.setdefault(f"grad:{layer}", snapshot.step)

"""Gradient norms per parameter, per layer and in total, read from ``.grad`` after backward."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable

import numpy as np
import torch

from torchhealth.amp import gradient_scale
from torchhealth.collectors.base import Arrays, AttachContext, Collector, State, file_values, host_values
from torchhealth.records import TOTAL, Snapshot

ParamEntry = tuple[str, str, torch.nn.Parameter]


def squared_norms(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Squared L2 norms of ``tensors`` as one float32 vector on ``device``.

    One ``torch._foreach_norm`` launch per device for dense tensors; sparse tensors are coalesced
    first (duplicate indices add up). No host synchronization.
    """
    if not tensors:
        return torch.zeros(0, device=device)
    if tensors[0].device == device and tensors[-1].device == device:
        try:  # the usual case: dense float32/bf16/fp16 tensors on one device (checked by the kernel)
            return torch.stack(torch._foreach_norm(tensors, 2, dtype=torch.float32)).square_()
        except (RuntimeError, NotImplementedError):
            pass  # sparse, float64 or spread over devices: grouped below
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
            n = n if n.dtype == torch.float32 else n.float()
            out[i] = n if dev == device else n.to(device, non_blocking=True)
    return torch.stack(out).square_()  # type: ignore[arg-type]


def current_device(params: list[ParamEntry], device: torch.device) -> torch.device:
    """Where the parameters are now (a model may be moved after attaching)."""
    return params[0][2].device if params else device


def sharded(tensors: list[torch.Tensor]) -> bool:
    """Whether any of ``tensors`` is FSDP2's DTensor (whose rank-local part ``local_tensor`` returns)."""
    return any(type(t) is not torch.nn.Parameter and hasattr(t, "to_local") for t in tensors)


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """The rank-local part of ``t`` (the shard of FSDP2's DTensor, else ``t`` itself)."""
    if type(t) is torch.Tensor:  # the common case, without hasattr's failed lookups
        return t
    return t.to_local() if hasattr(t, "to_local") and hasattr(t, "placements") else t


class LayerIndex:
    """Which layer each parameter belongs to; sums per-parameter values into per-layer values on the host.

    Per-parameter values are squared norms of rank-local parts. Each is divided by how many ranks
    hold that part (``copies``, see ``distributed.replica_counts``), so that the sum over ranks is
    the whole tensor's squared norm: the mean for replicated tensors such as DDP's averaged
    gradients, the sum of the shards' for FSDP. The division is the same on every rank, so it is
    done here, after the reduction.
    """

    def __init__(self, params: list[ParamEntry], copies: list[float] | None = None) -> None:
        self.layers = list(dict.fromkeys(layer for _, layer, _ in params))
        position = {layer: i for i, layer in enumerate(self.layers)}
        self._index = np.array([position[layer] for _, layer, _ in params], dtype=np.intp)
        self.copies = np.asarray(copies or [1.0] * len(params), dtype=np.float64)

    def whole(self, rank_sums: np.ndarray) -> np.ndarray:
        """Per-parameter squared norms of whole tensors from their sums over ranks."""
        return rank_sums / self.copies

    def per_layer(self, per_param: np.ndarray) -> np.ndarray:
        """Sums per-parameter values into one value per layer (NaN and Inf carry through)."""
        return np.bincount(self._index, weights=per_param, minlength=len(self.layers))


class GradientCollector(Collector):
    """Per-parameter, per-layer and total gradient L2 norms, computed only on check steps.

    Args (each taken from the monitor at ``attach`` when not given):
        params: ``(name, layer, parameter)`` entries as from ``layers.parameter_layers``.
        device: Where the norms are computed.
        per_parameter: Also file each parameter's norm (``param_grad_norm``).
        copies: How many ranks hold each parameter (``distributed.replica_counts``).
        scale: For AMP's GradScaler in a loop that calls ``monitor.step`` itself: returns the
            factor the gradients carry now (a device tensor, or None when they are unscaled).
            Norms are divided by it, and non-finite gradients are the scaler's overflow, a step it
            skips: that check files no gradient statistics instead of a non-finite gradient.
    """

    name = "gradients"

    def __init__(self, params: list[ParamEntry] | None = None, device: torch.device | None = None,
                 per_parameter: bool | None = None, copies: list[float] | None = None,
                 scale: Callable[[], torch.Tensor | None] | None = None) -> None:
        self.per_parameter = per_parameter
        self.scale = scale
        if params is not None:
            self._bind(params, device or torch.device("cpu"), copies)

    def attach(self, context: AttachContext) -> bool:
        if self.per_parameter is None:
            self.per_parameter = context.options.per_parameter
        scaler, optimizer = context.scaler, context.optimizer
        # a disabled scaler (GradScaler(enabled=False) for fp32 runs of the same script) never skips: NaN is NaN
        if self.scale is None and scaler is not None and scaler.is_enabled():
            self.scale = lambda: gradient_scale(scaler, optimizer)
        if not hasattr(self, "params"):
            self._bind(context.params, context.device, context.copies)
        return True

    def _bind(self, params: list[ParamEntry], device: torch.device, copies: list[float] | None) -> None:
        if self.per_parameter is None:
            self.per_parameter = True
        self.params = params
        self.device = device
        self.index = LayerIndex(params, copies)
        self.names = [name for name, _, _ in params]
        self._params = [p for _, _, p in params]
        self._sharded = sharded(self._params)
        self._zero: torch.Tensor | None = None  # stands in for a missing gradient (one tensor, made once)
        self._all_present = host_values([1.0] * len(params))  # the usual ``present`` (never written)

    def state(self) -> State:
        if not self.params:
            return {}
        self.device = current_device(self.params, self.device)
        grads = [p.grad for p in self._params]
        # Which parameters have a gradient is reduced too: under FSDP a rank with an empty shard has none.
        if any(g is None for g in grads):  # (not ``None in grads``: that compares every tensor with None)
            if self._zero is None or self._zero.device != self.device:
                self._zero = torch.zeros((), device=self.device)
            present = host_values(g is not None for g in grads)
            grads = [g if g is not None else self._zero for g in grads]
        else:
            present = self._all_present
        if self._sharded:  # FSDP2: the rank-local shards
            grads = [local_tensor(g) for g in grads]
        sq = squared_norms(grads, self.device)
        factor = self.scale() if self.scale is not None else None
        if factor is not None:
            factor = factor.to(sq.device, non_blocking=True)
            sq = sq.div(factor).div_(factor)  # not by its square, which overflows float32 for scales past 2**64
        return {"sq": (sq, "sum"), "present": (present, "sum")}

    def finish(self, state: Arrays, snapshot: Snapshot, interval_start: int) -> None:
        if "sq" not in state:
            return
        sq, present = self.index.whole(state["sq"]), state["present"] > 0
        total = float(sq.sum())
        if self.scale is not None and not math.isfinite(total):
            return  # the scaler's overflow: it skips this step (counted in ``Snapshot.skipped_steps``)
        everywhere = present.all()
        norms = np.sqrt(self.index.per_layer(sq))
        if everywhere:  # the usual case: no masks to build
            layers, names, param_sq = self.index.layers, self.names, sq
        else:
            has = self.index.per_layer(present.astype(np.float64)) > 0
            layers, norms = [layer for layer, ok in zip(self.index.layers, has) if ok], norms[has]
            names, param_sq = [name for name, ok in zip(self.names, present) if ok], sq[present]
        file_values(snapshot, "grad_norm", layers, norms)
        if everywhere or present.any():
            file_values(snapshot, "grad_norm", [TOTAL], [math.sqrt(total)])
        if self.per_parameter:
            file_values(snapshot, "param_grad_norm", names, np.sqrt(param_sq))
        if not math.isfinite(total):  # squared norms are >= 0: the total is finite exactly when every one is
            for layer, norm in zip(layers, norms):
                if not math.isfinite(norm):
                    snapshot.nonfinite.setdefault(f"grad:{layer}", snapshot.step)

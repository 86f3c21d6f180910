"""torch.distributed awareness: rank, world size, and the one batched reduction per check."""

from __future__ import annotations

import math
from typing import Hashable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from torchhealth.transfer import flat_float, to_device


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def reduce_state(state: dict[Hashable, tuple[torch.Tensor | np.ndarray, str]]) -> dict[Hashable, torch.Tensor | np.ndarray]:
    """Reduces every collector's raw state across ranks with ONE all-reduce.

    All state is additive: ``"sum"`` entries are summed, ``"mean"`` entries (values that are the same
    on every rank) are summed then divided by the world size. Host-side numpy arrays join the
    reduction as tensors. Without a process group this returns the state unchanged.

    Every rank must call this on the same check steps with the same names and shapes (collectors
    keep their state's layout independent of rank-local data), or the collective fails.
    """
    _, world = rank_and_world()
    if world == 1 or not state:
        return {name: tensor for name, (tensor, _) in state.items()}
    device = _collective_device()
    names = list(state)
    flat = torch.cat([to_device(flat_float(_as_tensor(state[n][0])), device) for n in names])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    out, start = {}, 0
    for name in names:
        values, op = state[name]
        size = math.prod(values.shape)
        part = flat[start:start + size].reshape(values.shape)
        out[name] = part / world if op == "mean" else part
        start += size
    return out


def _as_tensor(values: torch.Tensor | np.ndarray) -> torch.Tensor:
    return torch.from_numpy(values) if isinstance(values, np.ndarray) else values


def replica_counts(model: nn.Module, params: list[tuple[str, str, torch.Tensor]]) -> list[float]:
    """How many ranks hold each parameter's rank-local tensor.

    Summing ``value / copies`` over all ranks gives the whole tensor's value once: replicated
    parameters (plain, DDP) count the world size; FSDP2 DTensors count ``world / shards``
    (1 for a full shard, the replica count under HSDP); FSDP1 parameters of a sharded unit count
    ``world / shard group size``.

    Args:
        model: The model as the user passed it (FSDP1 wrappers still on).
        params: ``(name, layer, parameter)`` entries as from ``layers.parameter_layers``.
    """
    _, world = rank_and_world()
    fsdp1 = _fsdp1_shard_group_sizes(model) if world > 1 else {}
    counts = []
    for _, _, p in params:
        if hasattr(p, "placements") and hasattr(p, "device_mesh"):
            shards = math.prod(p.device_mesh.size(i) for i, pl in enumerate(p.placements) if pl.is_shard())
            counts.append(world / shards)
        else:
            counts.append(world / fsdp1.get(id(p), 1))
    return counts


def _fsdp1_shard_group_sizes(model: nn.Module) -> dict[int, int]:
    """``{id(parameter): shard group size}`` for parameters of sharded FullyShardedDataParallel units.

    Reads FSDP1's private handle (``_handle``); an FSDP version without it counts as unsharded.
    """
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # pragma: no cover - torch built without distributed
        return {}
    sizes = {}
    for module in model.modules():
        handle = getattr(module, "_handle", None) if isinstance(module, FullyShardedDataParallel) else None
        if handle is None or not getattr(handle, "uses_sharded_strategy", False):
            continue
        flat = handle.flat_param
        for p in [flat, *(getattr(flat, "_params", None) or [])]:
            sizes[id(p)] = handle.process_group.size()
    return sizes


def _collective_device() -> torch.device:
    backend = dist.get_backend()
    if backend == "nccl" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")

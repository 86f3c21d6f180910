"""torch.distributed awareness: rank, world size, and the one batched reduction per check."""

from __future__ import annotations

import torch
import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def reduce_state(state: dict[str, tuple[torch.Tensor, str]]) -> dict[str, torch.Tensor]:
    """Reduces every collector's raw state across ranks with ONE all-reduce.

    All state is additive: ``"sum"`` entries are summed, ``"mean"`` entries (values that are the same
    on every rank, like DDP's averaged gradients) are summed then divided by the world size.
    Without a process group this returns the tensors unchanged.
    """
    _, world = rank_and_world()
    if world == 1 or not state:
        return {name: tensor for name, (tensor, _) in state.items()}
    device = _collective_device()
    names = list(state)
    flat = torch.cat([state[n][0].detach().float().reshape(-1).to(device) for n in names])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    out, start = {}, 0
    for name in names:
        tensor, op = state[name]
        part = flat[start:start + tensor.numel()].reshape(tensor.shape)
        out[name] = part / world if op == "mean" else part
        start += tensor.numel()
    return out


def _collective_device() -> torch.device:
    backend = dist.get_backend()
    if backend == "nccl" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")

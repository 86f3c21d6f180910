"""One batched copy of a check's statistics from the device to the host."""

from __future__ import annotations

import math

import numpy as np
import torch


class HostCopy:
    """Copies many tensors to the host in ONE transfer, at construction.

    From a GPU the copy goes into pinned host memory without waiting (``non_blocking``), followed by
    a CUDA event; ``values()`` waits for that event only. The GPU therefore keeps running the work
    queued behind the check while the host has not yet asked for the numbers. On the CPU there is
    nothing to wait for. Either way the tensors are copied at once, so they may change afterwards.

    Values already on the host (numpy arrays, and CPU tensors next to GPU ones) are read directly:
    joining them to the device tensors would upload them first, a synchronization of its own.

    Args:
        tensors: Tensors or numpy arrays of any shape; read back as float32 numpy arrays of the
            same shapes (numpy arrays as given: they must not change afterwards).
    """

    def __init__(self, tensors: list[torch.Tensor | np.ndarray]) -> None:
        # ``is_cpu`` rather than ``device.type``: a check passes ~15 tensors, and each ``.device`` builds an object
        accelerated = next((t for t in tensors if isinstance(t, torch.Tensor) and not t.is_cpu), None)
        device = torch.device("cpu") if accelerated is None else accelerated.device
        self._joined = [isinstance(t, torch.Tensor) and (accelerated is None or not t.is_cpu) for t in tensors]
        self._shapes = [tuple(t.shape) for t in tensors]
        self._host_side = [t if isinstance(t, np.ndarray) else flat_float(t).numpy().copy().reshape(t.shape)
                           for t, joined in zip(tensors, self._joined) if not joined]
        self._event: torch.cuda.Event | None = None
        joined = [flat_float(t) for t, j in zip(tensors, self._joined) if j]
        if accelerated is not None and any(t.device != device for t in joined):  # a model spread over GPUs
            joined = [t.to(device) for t in joined]
        flat = torch.cat(joined) if joined else torch.zeros(0)
        if device.type == "cuda":
            self._buffer = torch.empty(flat.numel(), dtype=torch.float32, pin_memory=True)
            self._buffer.copy_(flat, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record(torch.cuda.current_stream(device))
        else:  # the CPU, or another accelerator (MPS, XPU...): an ordinary copy, read at once
            self._buffer = flat if flat.is_cpu else flat.cpu()

    @property
    def in_flight(self) -> bool:
        """True for a copy from a GPU, which is read later (``values()`` may have to wait)."""
        return self._event is not None

    def values(self) -> list[np.ndarray]:
        """The tensors' values, in the order given (waits for the copy)."""
        if self._event is not None:
            self._event.synchronize()
        flat = self._buffer.numpy()
        host_side = iter(self._host_side)
        out, start = [], 0
        for shape, joined in zip(self._shapes, self._joined):
            if joined:
                size = math.prod(shape)
                out.append(flat[start:start + size].reshape(shape))
                start += size
            else:
                out.append(next(host_side))
        return out


def flat_float(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a 1-d float32 tensor without autograd history, with no operation it does not need."""
    if t.requires_grad:
        t = t.detach()
    if t.dtype != torch.float32:
        t = t.float()
    return t if t.dim() == 1 else t.reshape(-1)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``; a host tensor goes to a GPU through pinned memory, without a synchronization.

    ``tensor.to("cuda")`` copies from pageable memory and waits for the copy; staging through pinned
    memory (PyTorch caches pinned blocks) lets it run asynchronously.
    """
    if t.device == device:
        return t
    if t.device.type == "cpu" and device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)

"""How the monitor names and classifies the layers of a model."""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

RELU_MODULES = (nn.ReLU, nn.ReLU6)
SATURATING_MODULES = {nn.Sigmoid: "sigmoid", nn.Tanh: "tanh"}
WRAPPER_CLASS_NAMES = ("DistributedDataParallel", "DataParallel", "FullyShardedDataParallel")
WRAPPER_NAME_PARTS = ("_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module")
"""Name segments that torch.compile, FSDP and activation checkpointing insert into qualified names."""
ROOT_NAME = "model"
"""Layer name used for parameters and functional calls that belong to the root module itself."""


def unwrap(model: nn.Module) -> nn.Module:
    """Strips DDP/DataParallel/FSDP wrappers and torch.compile's, so layer names carry no ``module.``
    prefix and the hooks go on the modules the compiled graph traces (not on its wrapper, whose
    attributes dynamo cannot read from inside the graph)."""
    while True:
        if type(model).__name__ in WRAPPER_CLASS_NAMES and isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        elif compiled_wrapper(model):
            model = model._orig_mod
        else:
            return model


def compiled_wrapper(module: nn.Module) -> bool:
    """Whether ``module`` is the wrapper ``torch.compile(module)`` returns (found by class name: the
    class lives in a private module of ``torch._dynamo``)."""
    return type(module).__name__ == "OptimizedModule" and isinstance(getattr(module, "_orig_mod", None), nn.Module)


def clean_name(name: str) -> str:
    """Removes wrapper segments (``_orig_mod`` from torch.compile, FSDP's ``_fsdp_wrapped_module``...).

    Segments are removed wherever they stand, so ``layer1._fsdp_wrapped_module`` becomes ``layer1``.
    """
    return ".".join(part for part in name.split(".") if part not in WRAPPER_NAME_PARTS) or ROOT_NAME


def activation_kind(module: nn.Module) -> str | None:
    """Returns ``"relu"``, ``"sigmoid"``, ``"tanh"`` for watched activation modules, else None."""
    if isinstance(module, RELU_MODULES):
        return "relu"
    for cls, kind in SATURATING_MODULES.items():
        if isinstance(module, cls):
            return kind
    return None


def parameter_layers(model: nn.Module) -> Iterator[tuple[str, str, nn.Parameter]]:
    """Yields ``(parameter name, owning layer name, parameter)`` for every trainable parameter."""
    for name, param in model.named_parameters():
        if param.requires_grad:
            name = clean_name(name)
            yield name, name.rsplit(".", 1)[0] if "." in name else ROOT_NAME, param


def unit_axis(shape: torch.Size, channels_first: bool) -> int | None:
    """The axis that indexes units: channels (dim 1) for conv outputs, else the last axis.

    Returns None for outputs with no batch/unit structure (0-d or 1-d).
    """
    if len(shape) < 2:
        return None
    if len(shape) >= 4 or (len(shape) == 3 and channels_first):
        return 1
    return len(shape) - 1

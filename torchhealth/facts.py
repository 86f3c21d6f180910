"""ModelFacts: what the monitor knows about the model and optimizer, for detectors and advice."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from torchhealth.layers import activation_kind, clean_name, unwrap

NORM_MODULES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)


@dataclass
class ModelFacts:
    """Static and discovered facts about the watched model.

    Attributes:
        layer_types: ``{layer: class name}`` for every named submodule.
        activations: ``{layer: kind}`` for every watched activation (modules and functional calls).
        forward_order: Layers in the order their forward ran (filled on the first sampled forward).
        conv1d_channels: Output channel counts of Conv1d layers (to tell (N, C, L) from (N, L, C)).
        normalization: Layers that normalise activations (BatchNorm, LayerNorm, GroupNorm, InstanceNorm).
        optimizer: The optimizer, if one was given.
    """

    layer_types: dict[str, str] = field(default_factory=dict)
    activations: dict[str, str] = field(default_factory=dict)
    forward_order: list[str] = field(default_factory=list)
    conv1d_channels: set[int] = field(default_factory=set)
    normalization: list[str] = field(default_factory=list)
    optimizer: torch.optim.Optimizer | None = None

    @classmethod
    def from_model(cls, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> "ModelFacts":
        """Collects the facts that need no training step."""
        facts = cls(optimizer=optimizer)
        for name, module in unwrap(model).named_modules():
            name = clean_name(name)
            facts.layer_types[name] = type(module).__name__
            kind = activation_kind(module)
            if kind:
                facts.activations[name] = kind
            if isinstance(module, nn.Conv1d):
                facts.conv1d_channels.add(module.out_channels)
            if isinstance(module, NORM_MODULES):
                facts.normalization.append(name)
        return facts

    def has(self, *class_names: str) -> bool:
        """True when any layer's class name is one of ``class_names``."""
        return any(t in class_names for t in self.layer_types.values())

    def learning_rate(self) -> float | None:
        """The optimizer's current learning rate (first param group), or None."""
        if self.optimizer is None or not self.optimizer.param_groups:
            return None
        lr = self.optimizer.param_groups[0].get("lr")
        return float(lr) if lr is not None else None

    def note_forward(self, layer: str) -> None:
        """Records that ``layer`` ran (the first time it is seen) to keep forward order."""
        if layer not in self._seen:
            self._seen.add(layer)
            self.forward_order.append(layer)

    def __post_init__(self) -> None:
        self._seen: set[str] = set(self.forward_order)

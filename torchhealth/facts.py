"""ModelFacts: what the monitor knows about the model and optimizer, for detectors and advice."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from torchhealth.layers import activation_kind, clean_name, unwrap

NORM_MODULES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)
WEIGHT_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)
RECURRENT_MODULES = (nn.RNNBase,)
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
SORT_CACHE = 64
"""Layer lists whose forward order is kept (detectors ask for a few, again at every check)."""


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
        weight_layers: Linear/Conv layers in definition order (the "depth" of a plain stack).
        init_gain: ``{layer: std(W) * sqrt(fan_in)}`` of Linear/Conv weights at attach time
            (about 0.58 for PyTorch's default init, 1.41 for Kaiming/He with ReLU).
        bias_mean: ``{layer: mean bias}`` of Linear/Conv layers at attach time.
        plain_stack: True when the model is built only from Sequential/ModuleList containers,
            so it has no room for residual connections.
        under_fp16_autocast: Whether a sampled forward ran under fp16 autocast (AMP).
        layer_groups: ``{layer: index}`` of the optimizer parameter group that holds each layer's
            (first) parameter, for advice that names the group a fix applies to.
        trained_elsewhere: Layers with trainable parameters that are in no group of the optimizer
            (a second optimizer trains them: a GAN's discriminator, an actor-critic's critic).
    """

    layer_types: dict[str, str] = field(default_factory=dict)
    activations: dict[str, str] = field(default_factory=dict)
    forward_order: list[str] = field(default_factory=list)
    conv1d_channels: set[int] = field(default_factory=set)
    normalization: list[str] = field(default_factory=list)
    optimizer: torch.optim.Optimizer | None = None
    weight_layers: list[str] = field(default_factory=list)
    init_gain: dict[str, float] = field(default_factory=dict)
    bias_mean: dict[str, float] = field(default_factory=dict)
    plain_stack: bool = False
    under_fp16_autocast: bool = False
    layer_groups: dict[str, int] = field(default_factory=dict)
    trained_elsewhere: list[str] = field(default_factory=list)

    @classmethod
    def from_model(cls, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> "ModelFacts":
        """Collects the facts that need no training step."""
        facts = cls(optimizer=optimizer)
        model = unwrap(model)
        facts.plain_stack = all(isinstance(m, CONTAINERS) for m in model.modules() if next(m.children(), None) is not None)
        for name, module in model.named_modules():
            name = clean_name(name)
            facts.layer_types[name] = type(module).__name__
            kind = activation_kind(module)
            if kind:
                facts.activations[name] = kind
            if isinstance(module, nn.Conv1d):
                facts.conv1d_channels.add(module.out_channels)
            if isinstance(module, NORM_MODULES):
                facts.normalization.append(name)
            if isinstance(module, WEIGHT_LAYERS) and module.weight is not None and module.weight.dim() >= 2:
                facts.weight_layers.append(name)
                facts.init_gain[name] = _gain(module.weight)
                if getattr(module, "bias", None) is not None:
                    facts.bias_mean[name] = _mean(module.bias)
        if optimizer is not None:
            group_of = {id(p): i for i, group in enumerate(optimizer.param_groups) for p in group["params"]}
            for name, module in model.named_modules():
                index = next((group_of[id(p)] for p in module.parameters(recurse=False) if id(p) in group_of), None)
                if index is not None:
                    facts.layer_groups[clean_name(name)] = index
                elif any(p.requires_grad for p in module.parameters(recurse=False)):
                    facts.trained_elsewhere.append(clean_name(name))
        return facts

    def has(self, *class_names: str) -> bool:
        """True when any layer's class name is one of ``class_names``."""
        return any(t in class_names for t in self.layer_types.values())

    def layers_of(self, *class_names: str) -> list[str]:
        """Layers whose class name is one of ``class_names``, in definition order."""
        return [name for name, t in self.layer_types.items() if t in class_names]

    def weight_decay(self) -> float | None:
        """The optimizer's weight decay (first param group), or None without an optimizer."""
        if self.optimizer is None or not self.optimizer.param_groups:
            return None
        return float(self.optimizer.param_groups[0].get("weight_decay", 0.0) or 0.0)

    def in_forward_order(self, layers: list[str]) -> list[str]:
        """``layers`` sorted by forward order (definition order for layers never seen running)."""
        key = (tuple(layers), len(self.forward_order), len(self.layer_types))
        if key not in self._sorted:  # detectors ask for the same layers at every check
            position = {name: i for i, name in enumerate(self.forward_order)}
            definition = {name: i for i, name in enumerate(self.layer_types)}
            if len(self._sorted) >= SORT_CACHE:
                self._sorted.clear()
            self._sorted[key] = sorted(layers, key=lambda n: (position.get(n, len(position)),
                                                               definition.get(n.split(":")[0].split("#")[0], 0)))
        return list(self._sorted[key])

    def learning_rate(self) -> float | None:
        """The optimizer's current learning rate (first param group), or None."""
        if self.optimizer is None or not self.optimizer.param_groups:
            return None
        lr = self.optimizer.param_groups[0].get("lr")
        return float(lr) if lr is not None else None

    def group(self, layers: Any = None) -> tuple[int, dict[str, Any]] | None:
        """``(index, param_group)`` of the optimizer group holding the first of ``layers`` (or the layer
        feeding it) that has one; the first group when none does; None without an optimizer."""
        if self.optimizer is None or not self.optimizer.param_groups:
            return None
        for layer in list(layers or []):
            for name in (layer, self.feeding_layer(layer)):
                if name in self.layer_groups:
                    index = self.layer_groups[name]
                    return index, self.optimizer.param_groups[index]
        return 0, self.optimizer.param_groups[0]

    def feeding_layer(self, site: str) -> str | None:
        """The weight layer that ran last before ``site`` in forward order (its pre-activations' source)."""
        if site not in self.forward_order:
            return None
        before = self.forward_order[:self.forward_order.index(site)]
        weights = set(self.weight_layers)
        return next((layer for layer in reversed(before) if layer in weights), None)

    def note_forward(self, layer: str) -> None:
        """Records that ``layer`` ran (the first time it is seen) to keep forward order."""
        if layer not in self._seen:
            self._seen.add(layer)
            self.forward_order.append(layer)

    def agree(self, orders: list[list[str]], activations: list[dict[str, str]]) -> None:
        """Adopts what every rank discovered, so that detectors and advice decide alike on every rank.

        Under torch.distributed each rank learns forward order and functional activation sites from
        its own forwards (a branch or an expert that only some ranks run). ``orders`` and
        ``activations`` are every rank's, rank 0 first: the forward order becomes rank 0's followed
        by what each next rank saw that the ranks before it did not; the activations their union.
        """
        merged = list(dict.fromkeys(name for order in orders for name in order))
        self.forward_order[:] = merged
        self._seen = set(merged)
        self._sorted.clear()
        kinds: dict[str, str] = {}
        for rank_kinds in activations:
            for name, kind in rank_kinds.items():
                kinds.setdefault(name, kind)
        self.activations.clear()
        self.activations.update(kinds)

    def __post_init__(self) -> None:
        self._seen: set[str] = set(self.forward_order)
        self._sorted: dict[tuple[tuple[str, ...], int, int], list[str]] = {}


def _gain(weight: torch.Tensor) -> float:
    """``std(W) * sqrt(fan_in)``: the init scale in units that do not depend on the layer's width."""
    return _measure(lambda w: float(w.std()) * w[0].numel() ** 0.5 if w.numel() > 1 else 0.0, weight)


def _mean(tensor: torch.Tensor) -> float:
    return _measure(lambda t: float(t.mean()), tensor)


def _measure(fn: Any, tensor: torch.Tensor) -> float:
    """Runs ``fn`` on a float copy of ``tensor`` once at attach; NaN where that cannot work.

    A sharded DTensor (FSDP2) is gathered first: reductions of a DTensor can leave rank-local
    partial values that ``float()`` would read, and facts must be the same on every rank.
    """
    try:
        with torch.no_grad():
            if hasattr(tensor, "full_tensor"):
                tensor = tensor.full_tensor()
            return fn(tensor.detach().float())
    except (RuntimeError, NotImplementedError):  # meta tensors, exotic shards: no init advice
        return float("nan")

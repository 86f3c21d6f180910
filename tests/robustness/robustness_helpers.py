"""Shared pieces of the robustness tests: tiny models, a training loop, hook inspection, a stateful detector."""

from __future__ import annotations

import json
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchhealth.detectors import Alert, Detector

MODULE_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                     "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs",
                     "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
                     "_load_state_dict_post_hooks")
GLOBAL_HOOK_DICTS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                     "_global_backward_pre_hooks", "_global_forward_hooks_always_called",
                     "_global_forward_hooks_with_kwargs")


class Net(nn.Module):
    """An MLP with an activation module, a saturating module and a functional ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2, self.squash, self.out = (
            nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.squash(F.relu(self.fc2(self.act(self.fc1(x))))))


def train(monitor, model: nn.Module, optimizer, steps: int, batch: int = 8, scale: float = 1.0,
          seed: int = 0) -> list[Alert]:
    """Runs ``steps`` regression steps of ``model`` on random data; returns all alerts ``step`` returned."""
    generator = torch.Generator().manual_seed(seed)
    alerts = []
    for _ in range(steps):
        param = next(model.parameters(), None)
        dtype = param.dtype if param is not None else torch.float32
        x = torch.randn(batch, 4, generator=generator).to(dtype)
        loss = (model(x) * scale).pow(2).mean()
        if loss.requires_grad:
            loss.backward()
        alerts += monitor.step(loss)
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad()
    return alerts


def leftover_hooks(model: nn.Module) -> list[str]:
    """Everything a monitor might leave behind: module hooks, global module hooks, function modes."""
    found = [f"{name or 'root'}.{attr}" for name, module in model.named_modules()
             for attr in MODULE_HOOK_DICTS if getattr(module, attr, None)]
    found += [attr for attr in GLOBAL_HOOK_DICTS if getattr(nn.modules.module, attr)]
    found += [f"function mode {type(m).__name__}" for m in torch.overrides._get_current_function_mode_stack()]
    return found


def read_alerts(log_dir: str) -> list[dict[str, Any]]:
    """Parses every line of ``alerts.jsonl`` (fails on a torn or non-JSON line)."""
    path = os.path.join(log_dir, "alerts.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def read_events(log_dir: str):
    """Loads the run's TensorBoard event files with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(log_dir, size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def alert_texts(accumulator) -> list[str]:
    """The markdown of every alert written to TensorBoard's text tab."""
    from torchhealth.sinks.tensorboard import ALERTS_TAG

    tags = [t for t in accumulator.Tags()["tensors"] if t.startswith(ALERTS_TAG)]  # with or without add_text's suffix
    return [e.tensor_proto.string_val[0].decode() for tag in tags for e in accumulator.Tensors(tag)]


class HighLossDetector(Detector):
    """A stateful test detector: one alert per episode of loss above ``limit`` for two checks running.

    Its state (recent losses and whether an episode is ongoing) goes through ``state_dict``, the
    contract every real detector follows.
    """

    kind = "test_high_loss"

    def __init__(self, limit: float, severity: str = "warning", static: bool = False) -> None:
        self.limit, self.severity, self.static = limit, severity, static
        self.recent: list[float] = []
        self.ongoing = False

    def check(self, snapshot, facts) -> list[Alert]:
        if snapshot.loss is None:
            return []
        self.recent = (self.recent + [snapshot.loss])[-2:]
        high = len(self.recent) == 2 and min(self.recent) > self.limit
        if high and not self.ongoing:
            self.ongoing = True
            return [Alert(self.kind, None, snapshot.step, self.severity, snapshot.loss,
                          f"loss {snapshot.loss:.3g} above {self.limit}")]
        if not high:
            self.ongoing = False
        return []

    def static_check(self, model, facts) -> list[Alert]:
        return [Alert("test_static", None, 0, "warning", 0.0, "a static finding")] if self.static else []

    def state_dict(self) -> dict[str, Any]:
        return {"recent": list(self.recent), "ongoing": self.ongoing}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.recent, self.ongoing = list(state["recent"]), bool(state["ongoing"])

"""Shared test helpers."""

from __future__ import annotations

import glob
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchhealth
from torchhealth.collectors.loss import LossCollector
from torchhealth.sinks.base import Sink


def scalar_tags(log_dir: str) -> set[str]:
    """Every scalar tag in the event files directly under ``log_dir`` (read with TensorBoard's reader)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert glob.glob(os.path.join(log_dir, "events.out.tfevents.*")), f"no event files in {log_dir}"
    acc = EventAccumulator(log_dir, size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return set(acc.Tags()["scalars"]) | set(acc.Tags().get("tensors", []))


def all_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


class SnapshotRecorder(Sink):
    name = "recorder"

    def __init__(self) -> None:
        self.snapshots = []

    def write_snapshot(self, snapshot) -> None:
        self.snapshots.append(snapshot)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def batches(n: int):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(6, 8, generator=g), torch.randn(6, 4, generator=g)) for _ in range(n)]


class TinyBody:
    """A tiny regression module's body, to combine with either Lightning package's LightningModule."""

    def __init__(self, lr: float = 0.05, poison_after: int | None = None) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
        self.lr = lr
        self.poison_after = poison_after

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        if self.poison_after is not None and self.global_step >= self.poison_after:
            loss = loss * float("nan")
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 8, generator=g)
        data = torch.utils.data.TensorDataset(x, x.sum(dim=1, keepdim=True))
        return torch.utils.data.DataLoader(data, batch_size=8)


def quiet_steps_tried(monkeypatch) -> list[bool]:
    """A list that gets, for each step that tries the quiet path, whether it was taken."""
    taken: list[bool] = []
    quiet_step = torchhealth.Monitor._quiet_step
    monkeypatch.setattr(torchhealth.Monitor, "_quiet_step", lambda self, loss: taken.append(quiet_step(self, loss)) or taken[-1])
    return taken


def run_with_events(quiet_path: bool, monkeypatch, host_losses: bool = True, device: str = "cpu") -> tuple[list, list, list]:
    """60 steps with events on steps between checks; returns (snapshots, alerts, each quiet step tried: taken?).

    Events: loss spikes (the trip-wire forces a check at the next step), a validation loss, a
    loss recorded with ``log_loss`` before a ``step()`` without one, a checkpoint saved and loaded
    mid-interval, and a NaN loss. ``host_losses=False`` keeps the losses as on a GPU; ``device``
    is where the model trains.
    """
    if not quiet_path:
        monkeypatch.setattr(torchhealth.Monitor, "_quiet_steps_ahead", lambda self: 0)
    if not host_losses:
        monkeypatch.setattr(LossCollector, "_host_view", lambda self: None)
    taken = quiet_steps_tried(monkeypatch)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    monitor = torchhealth.Monitor(model, opt, strict=True, check_every=5, log_every=10, sample_every=5,
                                  on_alert=lambda a: None)
    x, y = torch.randn(32, 6).to(device), torch.randint(0, 3, (32,)).to(device)
    snapshots = []
    for step in range(60):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if step == 23:
            monitor.step(loss * 100)
        elif step == 27:  # a spike recorded by log_loss, then a step() without a loss
            monitor.log_loss(loss * 100)
            monitor.step()
        elif step == 36:
            monitor.step(loss, val_loss=loss.detach() * 1.5)
        elif step == 42:
            monitor.log_loss(loss)
            monitor.step()
        elif step == 47:
            state = monitor.state_dict()
            monitor.step(loss)
            monitor.load_state_dict(state)
        elif step == 53:
            monitor.step(loss * float("nan"))
        else:
            monitor.step(loss)
        opt.step()
        opt.zero_grad()
        if monitor.last_snapshot is not None and (not snapshots or snapshots[-1] is not monitor.last_snapshot):
            snapshots.append(monitor.last_snapshot)
    alerts = [(a.kind, a.layer, a.step, a.severity) for a in monitor.alerts]
    monitor.close()
    with pytest.raises(RuntimeError, match="after close"):
        monitor.step(loss)
    return snapshots, alerts, taken


def mlp_facts(depth: int = 4, activation=nn.ReLU, lr: float = 0.1) -> "torchhealth.facts.ModelFacts":
    """Facts of a plain ``depth``-layer MLP (width 8) under SGD, its forward order noted."""
    layers = []
    for _ in range(depth - 1):
        layers += [nn.Linear(8, 8), activation()]
    model = nn.Sequential(*layers, nn.Linear(8, 2))
    facts = torchhealth.facts.ModelFacts.from_model(model, torch.optim.SGD(model.parameters(), lr=lr))
    for name in facts.layer_types:
        if name != "model":
            facts.note_forward(name)
    return facts

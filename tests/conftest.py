"""Shared fixtures: small models and a training-step helper."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import torchhealth


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.set_num_threads(1)


def train_steps(model, monitor, steps, make_batch, optimizer=None, loss_fn=F.cross_entropy):
    """Runs ``steps`` plain training steps with the two-line integration."""
    for _ in range(steps):
        x, y = make_batch()
        loss = loss_fn(model(x), y)
        loss.backward()
        monitor.step(loss)
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad()
        else:
            model.zero_grad()


@pytest.fixture
def strict_monitor():
    """Builds monitors that re-raise internal errors and checks/samples every step."""
    made = []

    def build(model, optimizer=None, **options):
        options = {"check_every": 1, "log_every": 1, "sample_every": 1, "strict": True, **options}
        monitor = torchhealth.Monitor(model, optimizer, **options)
        made.append(monitor)
        return monitor

    yield build
    for monitor in made:
        monitor.close()

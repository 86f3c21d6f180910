"""Monitor state is O(parameters + units): it does not grow with the number of steps."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import torchhealth
from torchhealth.collectors.base import state_nbytes


def test_state_does_not_grow_with_the_number_of_steps():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = torchhealth.Monitor(model, opt, strict=True, check_every=10, log_every=10, sample_every=1)
    x, y = torch.randn(4, 4), torch.randint(0, 2, (4,))
    sizes = {}
    for step in range(1001):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        monitor.step(loss)
        opt.step()
        opt.zero_grad()
        if step in (100, 1000):
            sizes[step] = (state_nbytes(list(monitor.collectors.values())),
                           sum(len(site.seen) for site in monitor.collectors["activations"].sites.values()))
    monitor.close()
    assert sizes[100][0] > 0
    assert sizes[1000] == sizes[100]
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    assert sizes[1000][0] < 4 * params + 4096  # one weight copy, norms, per-unit and per-step vectors

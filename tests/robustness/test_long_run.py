"""Long runs: constant memory, event files that grow with the logging interval only, no alert storms."""

from __future__ import annotations

import gc
import glob
import math
import os
from collections import Counter

import torch
from torch import nn

from robustness_helpers import read_events
from torchhealth import Monitor

STEPS = 10_000


def elements(value) -> int:
    """How many entries a nested structure of dicts and lists holds."""
    if isinstance(value, dict):
        return len(value) + sum(elements(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return len(value) + sum(elements(v) for v in value)
    return 0


def state_sizes(monitor: Monitor) -> dict[str, int]:
    """Every container a monitor could grow, with its size."""
    tensors = [t for c in monitor.collectors.values() for t in vars(c).values() if isinstance(t, torch.Tensor)]
    tensors += [t for s in monitor.collectors["activations"].sites.values() for t in (s.fires, s.off, s.flags.flags)]
    return {
        "tensor elements": sum(t.numel() for t in tensors),
        "sites": len(monitor.collectors["activations"].sites),
        "calls": len(monitor.collectors["activations"]._calls),
        "alerts": len(monitor.alerts),
        "forward order": len(monitor.facts.forward_order),
        "activations": len(monitor.facts.activations),
        "disabled parts": len(monitor.guard.disabled),
        "detector state": sum(elements(d.state_dict()) for d in monitor.detectors),
    }


def resident_bytes() -> int:
    """The process's resident set size (Linux), or 0 where /proc is missing."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def live_objects() -> Counter:
    gc.collect()
    return Counter(type(o).__name__ for o in gc.get_objects())


def test_ten_thousand_steps_constant_memory_bounded_events(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = Monitor(model, optimizer=optimizer, log_dir=tmp_path, check_every=10, log_every=100)
    x, y = torch.randn(4, 2), torch.randn(4, 1)
    sizes, objects, rss = {}, {}, {}
    for step in range(STEPS):
        if step in (4_000, STEPS - 1):
            sizes[step], objects[step], rss[step] = state_sizes(monitor), live_objects(), resident_bytes()
        loss = (model(x) - y).pow(2).mean()
        loss.backward()
        monitor.step(loss)
        optimizer.step()
        optimizer.zero_grad()
    monitor.close()

    assert sizes[4_000] == sizes[STEPS - 1]
    assert len(monitor.alerts) <= 2, f"a healthy 10,000-step run raised {[str(a) for a in monitor.alerts]}"
    # a leak of one object per check would add 600; torch's lazy caches add a few dozen once
    grown = {kind: n for kind, n in (objects[STEPS - 1] - objects[4_000]).items() if n > 100}
    assert not grown, f"live Python objects grew over 6,000 steps (600 checks): {grown}"
    assert rss[STEPS - 1] - rss[4_000] < 4 * 2**20, "resident memory grew by more than 4 MiB"

    events = read_events(str(tmp_path))
    tags = events.Tags()["scalars"]
    for tag in tags:
        # one point per tag per logging step (no update measured before step 0; dead units from the
        # first closed window on, ~2,600 steps at batch 4), plus at most one from close()'s final check
        steps = [e.step for e in events.Scalars(tag)]
        logged = [s for s in steps if s % 100 == 0]
        first = {"update_ratio": 100, "dead_units": logged[0]}.get(tag.split("/")[1], 0)
        assert logged == list(range(first, STEPS, 100)), tag
        assert steps[len(logged):] in ([], [STEPS - 1]), tag
    size = sum(os.path.getsize(f) for f in glob.glob(os.path.join(tmp_path, "events.*")))
    assert size < len(tags) * (STEPS // 100) * 100 + 10_000, f"{size} bytes for {len(tags)} tags"


def test_persistent_fault_raises_no_alert_storm():
    """A fault that lasts thousands of steps is one episode per (kind, layer), not one alert per check."""
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = Monitor(model, optimizer=optimizer, check_every=10)
    x = torch.randn(4, 2)
    for step in range(2_000):
        loss = model(x).pow(2).mean()
        loss.backward()
        if step >= 100:
            model[0].weight.grad.fill_(math.nan)  # every later gradient is non-finite
        monitor.step(loss * math.inf if step >= 100 else loss)
        optimizer.zero_grad()
    counts = Counter((a.kind, a.layer) for a in monitor.alerts)
    assert all(n <= 2 for n in counts.values()), counts
    assert sum(counts.values()) <= 10
    monitor.close()

"""The loss collector: every form of loss gives the same interval statistics; the usual CPU loss costs no ATen operation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import torchhealth
from torchhealth.collectors.loss import LossCollector, host_number
from torchhealth.collectors.tripwire import FLOAT32_MAX
from torchhealth.records import Snapshot


class OpCounter(TorchDispatchMode):
    """Counts every ATen operation run inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


LOSS_FORMS = {  # value -> the loss as a training loop may pass it
    "float32": lambda v: torch.tensor(v),
    "requires_grad": lambda v: torch.tensor(v, requires_grad=True) * 1.0,
    "view": lambda v: torch.tensor([0.0, v])[1],
    "float64": lambda v: torch.tensor(v, dtype=torch.float64),
    "bfloat16": lambda v: torch.tensor(v, dtype=torch.bfloat16),
    "one_element": lambda v: torch.tensor([v]),
    "python_float": lambda v: float(v),
    "numpy_float32": lambda v: np.float32(v),
}


def interval_losses(losses_per_step: list[list]) -> list[float]:
    """Records each step's (micro-batch) losses in a CPU collector; returns the per-step sums it read."""
    collector = LossCollector(torch.device("cpu"), len(losses_per_step))
    for offset, losses in enumerate(losses_per_step):
        for loss in losses:
            collector.record(loss, offset)
        collector.end_step(offset)
    return collector.state()["losses"][0].tolist()


@pytest.mark.parametrize("form", LOSS_FORMS)
def test_every_form_of_loss_gives_the_float32_sums_of_the_general_path(form):
    """Up to float32 rounding: a Python number may be added before it is rounded, not after."""
    values = [[2.25], [0.5, 1.0 / 3.0], [float("nan")], [float("inf"), 1.0], [1e-30]]
    if form == "bfloat16":
        values = [[2.25], [0.5, 0.375], [float("nan")], [float("inf"), 1.0], [0.0078125]]  # exact in bf16
    expected = [torch.tensor(v, dtype=torch.float32).sum().item() for v in values]
    got = interval_losses([[LOSS_FORMS[form](v) for v in step] for step in values])
    assert [got[i] for i in (0, 1, 4)] == pytest.approx([expected[i] for i in (0, 1, 4)], rel=2 ** -23, abs=0)
    assert math.isnan(got[2]) and got[3] == math.inf


def test_a_float32_sum_beyond_its_range_becomes_infinite_as_on_the_device():
    got = interval_losses([[torch.tensor(FLOAT32_MAX), torch.tensor(FLOAT32_MAX)],
                           [torch.tensor(-FLOAT32_MAX), -FLOAT32_MAX], [FLOAT32_MAX, 1.0]])
    assert got[0] == math.inf and got[1] == -math.inf and got[2] == FLOAT32_MAX


def test_host_number_reads_only_what_is_in_host_memory_as_float32():
    assert host_number(torch.tensor(1.5)) == 1.5
    assert host_number(torch.tensor([0.0, 2.5])[1]) == 2.5  # a view: its own element, not the storage's first
    assert host_number(2.0) == 2.0 and host_number(math.inf) == math.inf
    # negative-bit views (the imaginary part of a conjugate stores the other sign): read with their sign
    assert host_number(torch.tensor(1 + 2j).conj().imag) == -2.0 and host_number(torch._neg_view(torch.tensor(1.5))) == -1.5
    assert interval_losses([[torch.tensor(1 + 2j).conj().imag]]) == [-2.0]
    no_storage = torch.sparse_coo_tensor(torch.zeros(0, 1, dtype=torch.long), torch.tensor([1.5]), (), check_invariants=True)
    for other in (torch.tensor(1.5, dtype=torch.float64), torch.tensor([1.5]), torch.nn.Parameter(torch.tensor(1.5)),
                  torch.tensor(1.5, device="meta"), no_storage, 1e39, 3, True, "1.5"):
        assert host_number(other) is None, other


def test_the_usual_cpu_loss_costs_no_torch_operation_on_an_unchecked_step():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    monitor = torchhealth.Monitor(model, strict=True, check_every=10, log_every=10, sample_every=10)
    x = torch.randn(16, 4)
    for step in range(4):
        loss = model(x).pow(2).mean()
        loss.backward()
        with OpCounter() as counter:
            monitor.step(loss)
        model.zero_grad()
        if step in (2, 3):  # neither a check nor the step before a sampled forward
            assert counter.ops == [], f"step {step} ran {counter.ops}"
    assert monitor.collectors["loss"].state()["losses"][0][2].item() == pytest.approx(loss.item(), rel=1e-6)
    monitor.close()


def test_quiet_device_steps_reach_the_check_at_their_own_offsets_only(monkeypatch):
    """The GPU's quiet path, run on the CPU: losses copied only into the trip-wire's slots are read
    at the check's finish, at their own offsets; offsets summed on the device keep their sums, and
    a slot left from an earlier interval does not leak into one where nothing was recorded."""
    monkeypatch.setattr(LossCollector, "_host_view", lambda self: None)  # as on a GPU
    collector = LossCollector(torch.device("cpu"), 6)

    def check() -> Snapshot:
        state = {key: value.numpy().copy() if isinstance(value, torch.Tensor) else value
                 for key, (value, _) in collector.state().items()}
        collector.reset_interval()
        snapshot = Snapshot(step=0)
        collector.finish(state, snapshot, 100)
        return snapshot

    for offset in range(4):  # an earlier interval: a NaN left in slot 3
        assert collector.record_quiet_step(torch.tensor(float("nan") if offset == 3 else 1.0), offset)
    assert collector.on_step(torch.tensor(1.0), 4), "the NaN trips the wire: the next step is a full one"
    assert collector.record_quiet_step(torch.tensor(1.0), 5)
    assert check().nonfinite == {"loss": 103}

    assert collector.record_quiet_step(torch.tensor(1.5), 0)
    collector.record(torch.tensor(2.0), 1)  # micro-batches, summed on the device, then a step() without a loss
    collector.record(torch.tensor(3.0), 1)
    assert collector.record_quiet_step(None, 1)
    assert not collector.record_quiet_step(torch.tensor(2.0, dtype=torch.float64), 2), "not the usual loss: full step"
    collector.on_step(torch.tensor(2.0, dtype=torch.float64), 2)
    assert collector.record_quiet_step(torch.tensor(float("inf")), 4)  # offsets 3 and 5 record nothing
    snapshot = check()
    assert snapshot.loss == (1.5 + 5.0 + 2.0) / 4 and snapshot.nonfinite == {"loss": 104}
    assert check().loss is None, "an interval with nothing recorded reads nothing from the slots"

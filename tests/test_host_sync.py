"""Host synchronizations per training step, counted on CPU.

On a GPU every read of a device value on the host (``.item()``, ``.tolist()``, ``bool(t)``, ...)
waits for all queued work. The monitor promises none on steps that check nothing and exactly one
batched read (a single ``.numpy()`` of the copied state) on check steps. On CPU nothing waits, so the reads are counted:
a TorchFunctionMode sees the Python-level calls and a TorchDispatchMode sees the ATen ops that read
a scalar or need data-dependent output sizes (and fresh host data, an upload on a GPU). Reads of
the loss the loop passes are counted apart: on the CPU the monitor reads it from host memory
(``tolist``), which waits for nothing; a loss on a GPU takes the device path, which reads nothing.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import torchhealth
from torchhealth.collectors import activation_sites
from torchhealth.collectors.loss import LossCollector

HOST_READS = {"item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__", "__complex__"}
SYNCING_OPS = {"aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.repeat_interleave",
               "aten._unique2", "aten.unique_consecutive", "aten.unique_dim"}
HOST_DATA_OPS = {"aten.lift_fresh"}


class HostSyncCounter:
    """Counts host reads of tensor values (and uploads of host data) inside a ``with`` block."""

    def __init__(self) -> None:
        self.reads: Counter[str] = Counter()
        self.loss_reads: Counter[str] = Counter()  # reads of ``loss``
        self.uploads: Counter[str] = Counter()
        self.loss: torch.Tensor | None = None
        counter = self

        class _Functions(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                name = getattr(func, "__name__", "")
                if name in HOST_READS:
                    of_loss = counter.loss is not None and bool(args) and args[0] is counter.loss
                    (counter.loss_reads if of_loss else counter.reads)[name] += 1
                return func(*args, **(kwargs or {}))

        class _Ops(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = str(func.overloadpacket)
                if name in SYNCING_OPS:
                    counter.reads[name] += 1
                elif name in HOST_DATA_OPS:
                    counter.uploads[name] += 1
                return func(*args, **(kwargs or {}))

        self._modes = (_Functions(), _Ops())

    def __enter__(self) -> "HostSyncCounter":
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)


class Net(nn.Module):
    """ReLU and Tanh modules, an in-place ReLU after BatchNorm, and a functional ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU(inplace=True)
        self.fc1 = nn.Linear(4 * 6 * 6, 16)
        self.tanh = nn.Tanh()
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x):
        h = self.act(self.bn(self.conv(x))).flatten(1)
        return self.fc2(F.relu(self.tanh(self.fc1(h))))


def counted_steps(steps: int, **options):
    """Trains ``Net`` with a monitor; returns per-step (host reads, uploads, reads of the loss) and the monitor."""
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    monitor = torchhealth.Monitor(model, opt, strict=True, **options)
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,))
    per_step = []
    for _ in range(steps):
        with HostSyncCounter() as counter:
            loss = counter.loss = F.cross_entropy(model(x), y)
            loss.backward()
            monitor.step(loss)
            opt.step()
            opt.zero_grad()
        per_step.append((dict(counter.reads), dict(counter.uploads), dict(counter.loss_reads)))
    monitor.scheduled_snapshot = monitor.last_snapshot  # close() checks the last steps once more
    monitor.close()
    return per_step, monitor


def assert_one_read_per_check(per_step, check_every: int) -> None:
    for step, (reads, uploads, _) in enumerate(per_step):
        if step % check_every == 0:
            assert reads == {"numpy": 1}, f"check step {step}: expected one batched read (.numpy()), got {reads}"
        else:
            assert reads == {}, f"unchecked step {step} read device values on the host: {reads}"
            assert uploads == {}, f"unchecked step {step} uploaded host data: {uploads}"


@pytest.mark.parametrize("loss_path", ["host", "device"])
@pytest.mark.parametrize("options", [
    {},  # the defaults: sampled forwards fall on check steps
    {"check_every": 5, "log_every": 10, "sample_every": 3},  # sampled forwards on unchecked steps too
], ids=["defaults", "sampling-between-checks"])
def test_no_host_reads_on_unchecked_steps_and_one_per_check(options, loss_path, tmp_path, monkeypatch):
    if loss_path == "device":  # losses kept as on a GPU: added on the device, copied to the trip-wire
        monkeypatch.setattr(LossCollector, "_host_view", lambda self: None)
    per_step, monitor = counted_steps(23, log_dir=str(tmp_path), **options)
    assert (monitor.collectors["loss"]._host_losses is None) == (loss_path == "device")
    assert_one_read_per_check(per_step, monitor.options.check_every)
    assert "zero_fraction" in monitor.scheduled_snapshot.stats  # the activation paths really ran
    # the loss itself: read from host memory once a step on the CPU path, never on the device path
    assert [loss_reads for _, _, loss_reads in per_step] == [{"tolist": 1} if loss_path == "host" else {}] * len(per_step)


def test_plain_training_step_reads_nothing():
    """The baseline: without a monitor, this loop reads no device value (so the counts are the monitor's)."""
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with HostSyncCounter() as counter:
        F.cross_entropy(model(torch.randn(8, 1, 6, 6)), torch.randint(0, 3, (8,))).backward()
        opt.step()
    assert dict(counter.reads) == {}


@pytest.mark.parametrize("plant", ["loss_item", "activation_bool"])
def test_a_planted_host_read_is_caught(plant, monkeypatch):
    if plant == "loss_item":  # a read of the collector's per-step losses (on a GPU: a wait for the device)
        record = LossCollector.record
        monkeypatch.setattr(LossCollector, "record",
                            lambda self, loss, offset: (self.losses.flags[offset].item(), record(self, loss, offset)))
    else:
        observe = activation_sites.Site.observe
        monkeypatch.setattr(activation_sites.Site, "observe", lambda self, x: (bool(x.amax() > 0), observe(self, x)))
    per_step, monitor = counted_steps(7, check_every=5, log_every=5, sample_every=3)
    planted_step = 3  # unchecked; its forward is sampled
    assert per_step[planted_step][0], "the counter missed a planted host read"
    with pytest.raises(AssertionError, match="step"):
        assert_one_read_per_check(per_step, monitor.options.check_every)

"""The code paths that only a GPU takes give the same statistics as the CPU ones.

On CPU these tests skip; ``benchmarks/gpu_checks.sh`` runs them on a GPU.
"""

from __future__ import annotations

import math

import pytest
import torch

from torchhealth.collectors.activation_sites import positive_counts

from tests.helpers import run_with_events

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("shape, dims", [((512, 1024), (0,)), ((8, 16, 7, 7), (0, 2, 3)), ((4, 9, 33), (0, 1)),
                                         ((300,), None)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_relu_counts_on_a_gpu_are_the_cpus(shape, dims, dtype):
    torch.manual_seed(0)
    x = torch.relu(torch.randn(shape)).to(dtype)  # about half exact zeros
    x.view(-1)[::7] = 0.0
    on_gpu = positive_counts(x.cuda(), dims).cpu()
    assert on_gpu.dtype is torch.float32
    assert torch.equal(on_gpu, positive_counts(x, dims))


def test_quiet_steps_on_a_gpu_record_what_full_steps_record(monkeypatch):
    """The loss of a quiet GPU step reaches the check through the trip-wire's host slot only."""
    quiet_snapshots, quiet_alerts, tried = run_with_events(True, monkeypatch, device="cuda")
    monkeypatch.undo()
    full_snapshots, full_alerts, _ = run_with_events(False, monkeypatch, device="cuda")
    # two quiet steps per interval of five: the step after a check reads the check's copy from the GPU
    assert sum(tried) >= 20, f"the quiet path ran on {sum(tried)} of 60 steps"
    assert [s.step for s in quiet_snapshots] == [s.step for s in full_snapshots]
    assert {24, 28} <= {s.step for s in full_snapshots}, "the spikes at steps 23 and 27 forced checks at the next step"
    for quiet, full in zip(quiet_snapshots, full_snapshots):
        assert quiet.nonfinite == full.nonfinite, quiet.step
        assert (quiet.loss is None) == (full.loss is None) and (quiet.loss is None or math.isclose(quiet.loss, full.loss, rel_tol=1e-5))
    assert quiet_alerts == full_alerts and "nonfinite" in [kind for kind, _, _, _ in full_alerts]
    assert {"loss": 52} in [s.nonfinite for s in full_snapshots]

"""TorchHealthCallback under Lightning's DDP strategy: two CPU ranks launched by torchrun (gloo)."""

from __future__ import annotations

import json

import pytest
import torch.distributed as dist

pytest.importorskip("lightning.pytorch")

from tests.dist_scripts.launch import torchrun  # noqa: E402

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")

CHECK_EVERY = 2  # as in lightning_worker.py


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lightning_ddp")
    proc = torchrun("lightning_worker.py", str(out))
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2) if (out / f"rank{r}.json").exists()]
    assert proc.returncode == 0 and len(ranks) == 2, proc.stdout[-4000:]
    return out, ranks


def test_units_dead_on_one_rank_alive_on_the_other_raise_no_alert(run):
    rank0, rank1 = (r["different_data"] for r in run[1])
    assert rank0["global_step"] == rank1["global_step"] == 12
    judged = [s["stats"]["dead_units"] for s in rank0["snapshots"] if "dead_units" in s["stats"]]
    assert judged and all(d == {"net.1": 0.0} for d in judged)
    # each rank alone sees only positive (rank 0) or negative (rank 1) inputs: half the units rectified
    assert all(s["stats"]["zero_fraction"]["net.1"] == pytest.approx(0.5) for s in rank0["snapshots"])
    assert rank0["alerts"] == rank1["alerts"] == []
    assert rank0["snapshots"] == rank1["snapshots"]
    assert set(rank0["snapshots"][0]["stats"]["grad_norm"]) == {"net.0", "net.2", "total"}


def test_nan_on_one_rank_stops_every_rank_at_the_same_step(run):
    rank0, rank1 = (r["nan_one_rank"] for r in run[1])
    assert rank0["alerts"] == rank1["alerts"]
    assert sorted(a["kind"] for a in rank0["alerts"]) == ["nonfinite", "test_nonfinite"]
    assert rank0["snapshots"][-1]["nonfinite"]["activation:net.1"] == 5
    assert rank0["global_step"] == rank1["global_step"] < 40


@pytest.mark.parametrize("fit", ["different_data", "nan_one_rank"])
def test_one_collective_per_check_and_none_on_other_steps(run, fit):
    # the first check agrees on the layout of the reduced state (docs/distributed.md): one all-reduce
    # of the header, one all_gather_object (2 collectives), the data again
    for rank in run[1]:
        steps = rank[fit]["collectives"]
        expected = {0: [2, 4]}
        assert steps and all(counts == expected.get(step, [int(step % CHECK_EVERY == 0)] * 2)
                             for step, *counts in steps), steps


def test_only_rank0_writes_health_files(run):
    out, (rank0, rank1) = run
    assert rank1["different_data"]["log_dir"] is None
    for fit in ("different_data", "nan_one_rank"):
        files = [p for p in (out / fit).rglob("*") if p.is_file()]
        assert files and not any(f".{rank1['pid']}." in p.name for p in files)
    written = (out / "nan_one_rank" / "tb" / "version_0" / "alerts.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in written] == rank0["nan_one_rank"]["alerts"]

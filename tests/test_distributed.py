"""The monitor under torch.distributed: DDP, FSDP2 (fully_shard) and FSDP1 on two gloo CPU ranks.

One ``torchrun --standalone --nproc_per_node=2`` run of ``dist_scripts/monitor_worker.py`` plays every
scenario (start-up is the expensive part); the tests below read what each rank recorded. References
are computed by each rank alone from every rank's data, never through the monitor's reduction.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from tests.dist_scripts.launch import torchrun
from tests.helpers import scalar_tags
from torchhealth import Monitor
from torchhealth.distributed import rank_and_world, replica_counts
from torchhealth.layers import clean_name, parameter_layers

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")

CHECK_EVERY = 5  # as in monitor_worker.py
DDP_SCENARIOS = ["ddp_data", "fault_every_rank", "fault_one_rank", "dead_everywhere", "raise", "raise_test_rule"]
DRIVEN_SCENARIOS = ["watch_accumulate"]  # no log_dir
FSDP_SCENARIOS = ["fsdp2", "fsdp1", "hsdp"]
# models whose structure differs between ranks, parts that fail on one rank (the layout agreement)
UNEVEN_SCENARIOS = ["moe", "lazy_branch", "collector_fails", "hooks_fail", "check_fails", "agreement_fails",
                    "nan_raise", "wrapped_differently"]
EXTENSION_SCENARIOS = ["custom_collector"]  # a collector and a detector added through the public API
ALL_TRAINING = DDP_SCENARIOS + DRIVEN_SCENARIOS + FSDP_SCENARIOS + UNEVEN_SCENARIOS + EXTENSION_SCENARIOS

# (all_reduce calls, collectives on the group) of a check at which the ranks exchange layouts. The
# first check always does (nothing is agreed yet): header all-reduce, all_gather_object (2
# collectives), the data again. Sites that differ between ranks are merged, and the merge
# confirmed by one more exchange: 3 all-reduces and 2 all_gather_object.
EXCHANGE = (2, 4)
MERGE = (3, 7)
AGREEING_CHECKS = {
    "moe": {0: MERGE},  # each rank has its own expert's sites from the first forward
    "lazy_branch": {0: EXCHANGE, 10: MERGE},  # rank 1 runs the branch from step 7; rank 0's (13) fills placeholders
    "collector_fails": {0: EXCHANGE, 10: EXCHANGE},  # rank 1's gradient collector fails at 10
    "hooks_fail": {0: EXCHANGE, 10: EXCHANGE},  # rank 1's activation hooks fail in step 10's forward
    # rank 1's check at 10 fails after its all-reduce; at 15 the ranks agree to stop checking (no data round)
    "check_fails": {0: EXCHANGE, 15: (1, 3), 20: (0, 0)},
    # rank 1 fails to lay its state out at 10, before the all-reduce: it joins it with zeros, checks stop
    "agreement_fails": {0: EXCHANGE, 10: (1, 3), 15: (0, 0), 20: (0, 0)},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, list[dict]]:
    """``(output dir, [rank 0 record, rank 1 record])``.

    With ``TORCHHEALTH_DIST_RESULTS=<dir>`` the records are read from a finished run instead (how
    the CUDA results of fsdp_cuda_check.sh are checked with these same assertions).
    """
    given = os.environ.get("TORCHHEALTH_DIST_RESULTS")
    out = Path(given) if given else tmp_path_factory.mktemp("distributed")
    proc = None if given else torchrun("monitor_worker.py", str(out))
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2) if (out / f"rank{r}.json").exists()]
    failed = {name: rec["error"] for rank in ranks for name, rec in rank.items() if isinstance(rec, dict) and "error" in rec}
    assert (proc is None or proc.returncode == 0) and len(ranks) == 2 and not failed, \
        f"{failed}\n{proc.stdout[-4000:] if proc else ''}"
    return out, ranks


def both(run, scenario: str) -> tuple[dict, dict]:
    return run[1][0][scenario], run[1][1][scenario]


def test_units_dead_on_one_rank_alive_on_another_raise_no_alert(run):
    rank0, rank1 = both(run, "ddp_data")
    # The premise: on its own inputs each rank leaves half the hidden units dead (the shipped
    # DeadUnits detector warns from a half).
    assert rank0["locally_dead_fraction"] == rank1["locally_dead_fraction"] == 0.5
    judged = [s["stats"]["dead_units"] for s in rank0["snapshots"] if "dead_units" in s["stats"]]
    assert judged and all(d == {"1": 0.0} for d in judged)
    # neither the test rule (any dead unit) nor the shipped detectors alert
    assert rank0["delivered"] == rank1["delivered"] == []


def test_units_dead_on_every_rank_raise_the_same_dead_unit_alert_on_every_rank(run):
    rank0, rank1 = both(run, "dead_everywhere")
    assert rank0["delivered"] == rank1["delivered"]
    dead = [a for a in rank0["delivered"] if a["kind"] == "dead_units"]
    assert [(a["layer"], a["step"], a["value"]) for a in dead] == [("1", 5, 0.5)]


def test_window_sample_counts_come_from_all_ranks(run):
    # 5 steps x 8 samples = 40 per rank, below window_samples=64: only the global count (80) closes a window.
    snapshot = next(s for s in run[1][0]["ddp_data"]["snapshots"] if s["step"] == 10)
    assert snapshot["window_samples"] == 80


def test_step0_statistics_are_those_of_the_global_batch(run):
    record = run[1][0]["ddp_data"]
    snapshot, expected = record["snapshots"][0], record["reference_step0"]
    assert snapshot["step"] == 0
    assert snapshot["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    for family in ("grad_norm", "weight_norm", "zero_fraction"):
        got = {layer: v for layer, v in snapshot["stats"][family].items() if layer != "total"}
        assert got == pytest.approx(expected[family], rel=1e-5), family


@pytest.mark.parametrize("scenario", ALL_TRAINING)
def test_every_rank_sees_the_same_snapshots(run, scenario):
    rank0, rank1 = both(run, scenario)
    # check_fails: rank 1 failed to read the check at step 10, which rank 0 read
    read_by_both = [s for s in rank0["snapshots"] if scenario != "check_fails" or s["step"] != 10]
    assert read_by_both and read_by_both == rank1["snapshots"]


def test_watch_with_no_sync_accumulation_reads_the_averaged_gradients(run):
    record = run[1][0]["watch_accumulate"]
    assert [s["step"] for s in record["snapshots"]] == [0, 5]
    assert record["snapshots"][0]["stats"]["grad_norm"]["total"] == pytest.approx(record["reference_step0_grad_norm"],
                                                                                rel=1e-5)


@pytest.mark.parametrize("scenario", ["fault_every_rank", "fault_one_rank"])
def test_a_fault_raises_the_same_alert_on_every_rank_at_the_same_step(run, scenario):
    rank0, rank1 = both(run, scenario)
    assert rank0["alerts"] == rank1["alerts"]
    rule = [a for a in rank0["alerts"] if a["kind"] == "test_nonfinite"]
    assert [(a["step"], a["evidence"]["first_step"]) for a in rule] == [(10, 7)]
    assert "activation:1" in rule[0]["evidence"]["sources"]
    # the shipped NonFinite detector names the same root, at the step the NaN appeared, on every rank
    shipped = [a for a in rank0["alerts"] if a["kind"] == "nonfinite"]
    assert [(a["layer"], a["step"], a["evidence"]["root"]) for a in shipped] == [("1", 7, "activation:1")]


@pytest.mark.parametrize("scenario, kind", [("raise_test_rule", "test_loss"), ("raise", "exploding_gradient")])
def test_raise_stops_every_rank_at_the_same_step(run, scenario, kind):
    rank0, rank1 = both(run, scenario)
    assert rank0["raised_at"] == rank1["raised_at"] == 15 + rank0["read_lag"]
    assert rank0["raised_alert"] == rank1["raised_alert"] and rank0["raised_alert"]["kind"] == kind
    # Rank 0's own loss stayed small: it stopped because the loss mean is global.
    assert rank0["local_loss_at_raise"] < 10 and rank1["local_loss_at_raise"] > 1e4
    assert rank0["passed_barrier"] and rank1["passed_barrier"]


@pytest.mark.parametrize("scenario", ALL_TRAINING)
def test_one_collective_per_check_and_none_on_other_steps(run, scenario):
    # Only checks at which some rank's layout changed (the first, a new site, a failed part) exchange
    # layouts; every other check is one all-reduce, and steps between checks issue none.
    agreeing = AGREEING_CHECKS.get(scenario, {0: EXCHANGE})
    for record in both(run, scenario):
        assert record["collectives"], "no steps recorded"
        for step, all_reduce_calls, group_collectives in record["collectives"]:
            expected = (0, 0) if step % CHECK_EVERY else agreeing.get(step, (1, 1))
            assert (all_reduce_calls, group_collectives) == expected, f"step {step}"
        assert record["exchanges"] == sum({MERGE: 2, (0, 0): 0}.get(counts, 1) for counts in agreeing.values())


def test_a_users_collector_is_reduced_with_the_others_and_its_rule_decides_alike_on_every_rank(run):
    out, _ = run
    rank0, rank1 = both(run, "custom_collector")
    snr = [s["stats"].get("gradient_snr") for s in rank0["snapshots"]]
    assert snr[0] is None and all(v and set(v) == {"0", "2"} for v in snr[1:]), snr  # one step at step 0: no SNR
    noisy = [(a["evidence"]["layers"], a["step"]) for a in rank0["delivered"] if a["kind"] == "noisy_gradients"]
    assert noisy == [(["0", "2"], 10)] and rank0["delivered"] == rank1["delivered"]  # one alert for both layers
    assert {"health/gradient_snr/0", "health/gradient_snr/2"} <= scalar_tags(str(out / "custom_collector"))


def test_mixture_of_experts_with_per_rank_routing_trains_to_the_end_with_one_picture(run):
    out, _ = run
    rank0, rank1 = both(run, "moe")
    # the premise: each rank ran only its own expert's activations (and rank 1 the functional ReLU)
    assert rank0["sites_seen_here"] == ["experts.0.act", "experts.2.act"]
    assert rank1["sites_seen_here"] == ["experts.1.act", "experts.1:relu"]
    assert len(rank0["collectives"]) == len(rank1["collectives"]) == 21  # every step ran, on both ranks
    assert rank0["alerts"] == rank1["alerts"] and rank0["delivered"] == rank1["delivered"]
    kinds = {a["kind"] for a in rank0["delivered"]}
    assert not kinds & {"dead_units", "vanishing_gradient"}, rank0["delivered"]
    sites = {"experts.0.act", "experts.1.act", "experts.1:relu"}
    layers = {f"experts.{e}.{layer}" for e in (0, 1) for layer in ("fc1", "fc2")} | {"experts.1.extra"}
    spare = {"experts.2.fc1", "experts.2.fc2"}
    for snapshot in rank0["snapshots"]:
        step, stats = snapshot["step"], snapshot["stats"]
        # the spare expert ran at steps 0-2 (rank 0 only): observed in those intervals, then not at all
        assert set(stats["zero_fraction"]) == sites | ({"experts.2.act"} if step <= 5 else set()), step
        assert set(stats["grad_norm"]) == layers | {"total"} | (spare if step == 0 else set()), step
        # its window (6 samples) never closes: not observed enough to judge, so never dead
        assert set(stats.get("dead_units", sites)) == sites
        assert all(share == 0.0 for share in stats.get("dead_units", {}).values())
    assert rank0["forward_order"] == rank1["forward_order"]  # detectors order layers alike on every rank
    tags = scalar_tags(str(out / "moe"))
    assert {f"health/zero_fraction/{site}" for site in sites} <= tags
    assert {f"health/dead_units/{site}" for site in sites} <= tags
    assert {f"health/grad_norm/{layer}" for layer in layers} <= tags


def test_a_branch_first_taken_on_one_rank_is_reduced_from_the_check_after(run):
    rank0, rank1 = both(run, "lazy_branch")
    assert rank0["snapshots"] == rank1["snapshots"] and rank0["alerts"] == rank1["alerts"]
    by_step = {s["step"]: s["stats"] for s in rank0["snapshots"]}
    assert sorted(by_step) == [0, 5, 10, 15, 20]
    # steps 7-10 ran the branch on rank 1 only: its statistics are in the check at step 10, for both ranks
    assert "saturation" not in by_step[5] and "branch.1" in by_step[10]["saturation"]
    assert all("branch.1" in by_step[step]["saturation"] for step in (15, 20))
    assert rank0["forward_order"] == rank1["forward_order"]


def test_a_collector_failing_on_one_rank_is_switched_off_on_every_rank_at_the_same_check(run):
    rank0, rank1 = both(run, "collector_fails")
    assert rank0["disabled"] == rank1["disabled"] == ["collector gradients"]
    by_step = {s["step"]: s["stats"] for s in rank0["snapshots"]}
    assert sorted(by_step) == [0, 5, 10, 15, 20]  # the job and the checks went on
    assert [step for step, stats in by_step.items() if "grad_norm" in stats] == [0, 5]
    assert all("zero_fraction" in by_step[step] for step in (10, 15, 20))  # the other statistics keep coming
    assert [s["loss"] is not None for s in rank0["snapshots"]] == [True] * 5
    # one message for the job, from rank 0, naming the rank and the error
    said = [m for m in rank0["log"] if "collector gradients" in m]
    assert len(said) == 1 and "rank 1: RuntimeError: injected failure in collector_fails" in said[0], rank0["log"]
    assert "every rank" in said[0]
    # the failing rank logged its own traceback, naming itself; rank 0 logged nothing else about it
    assert [m for m in rank1["log"] if "collector gradients" in m] == [
        "torchhealth: collector gradients failed on rank 1 and is switched off; every rank switches it off at the "
        "next check; training continues"]


def test_activation_hooks_failing_on_one_rank_are_switched_off_on_every_rank_at_the_same_check(run):
    rank0, rank1 = both(run, "hooks_fail")
    assert rank0["disabled"] == rank1["disabled"] == ["activation hooks"]
    by_step = {s["step"]: s["stats"] for s in rank0["snapshots"]}
    assert sorted(by_step) == [0, 5, 10, 15, 20]
    assert [step for step, stats in by_step.items() if "zero_fraction" in stats] == [0, 5]
    assert all("grad_norm" in by_step[step] for step in (10, 15, 20))
    said = [m for m in rank0["log"] if "activation hooks" in m]
    assert len(said) == 1 and "rank 1: RuntimeError: injected failure in hooks_fail" in said[0], rank0["log"]


def test_a_check_failing_on_one_rank_stops_checks_on_every_rank_at_the_next_check(run):
    rank0, rank1 = both(run, "check_fails")
    assert "check" in rank0["disabled"] and "check" in rank1["disabled"]
    assert [s["step"] for s in rank0["snapshots"]] == [0, 5, 10] and [s["step"] for s in rank1["snapshots"]] == [0, 5]
    assert len(rank0["collectives"]) == len(rank1["collectives"]) == 21 and rank0["passed_barrier"] and rank1["passed_barrier"]
    said = [m for m in rank0["log"] if "check failed" in m]
    assert len(said) == 1 and "rank 1: RuntimeError: injected failure in check_fails" in said[0], rank0["log"]


def test_a_failure_in_the_agreement_on_one_rank_still_joins_the_collective(run):
    rank0, rank1 = both(run, "agreement_fails")
    assert "check" in rank0["disabled"] and "check" in rank1["disabled"]
    assert [s["step"] for s in rank0["snapshots"]] == [s["step"] for s in rank1["snapshots"]] == [0, 5]
    assert len(rank0["collectives"]) == len(rank1["collectives"]) == 21 and rank0["passed_barrier"] and rank1["passed_barrier"]
    said = [m for m in rank0["log"] if "check failed" in m]
    assert len(said) == 1 and "rank 1: RuntimeError: injected failure in agreement_fails" in said[0], rank0["log"]


def test_nan_on_one_rank_raises_on_every_rank_at_the_same_step(run):
    rank0, rank1 = both(run, "nan_raise")
    assert rank0["raised_at"] == rank1["raised_at"] == 10 + rank0["read_lag"]
    assert rank0["raised_alert"] == rank1["raised_alert"] and rank0["raised_alert"]["kind"] == "nonfinite"
    assert rank0["passed_barrier"] and rank1["passed_barrier"]


def test_a_monitor_on_the_wrapper_and_one_on_the_module_inside_it_work_together(run):
    rank0, rank1 = both(run, "wrapped_differently")
    assert rank0["snapshots"] == rank1["snapshots"] == run[1][0]["ddp_data"]["snapshots"][:3]


@pytest.mark.parametrize("case, names", [("check_every", ["check_every (rank 0: 5, rank 1: 10)"]),
                                         ("optimizer", ['optimizer (rank 0: "SGD", rank 1: null)']),
                                         ("model", ["parameters (rank 0: \"4 tensors", "rank 1: \"6 tensors"])])
def test_monitors_that_differ_between_ranks_are_refused_on_every_rank(run, case, names):
    for rank in (0, 1):
        refused = run[1][rank]["refused"][case]
        assert refused["error"] == "ValueError" and all(name in refused["message"] for name in names), refused


def test_a_monitor_made_on_one_rank_only_says_so_instead_of_hanging(run):
    refused = run[1][0]["refused"]
    assert refused["one_rank_only"]["error"] == "RuntimeError"
    assert "rank(s) [1] created no matching monitor" in refused["one_rank_only"]["message"]
    assert refused["passed_barrier"] and run[1][1]["refused"]["passed_barrier"]


def test_only_rank0_writes_files(run):
    out, ranks = run
    pid0, pid1 = ranks[0]["pid"], ranks[1]["pid"]
    for scenario in DDP_SCENARIOS:
        files = sorted(p.name for p in (out / scenario).iterdir())
        events = [f for f in files if f.startswith("events.out.tfevents.")]
        assert len(events) == 1 and re.search(rf"\.{pid0}\.\d+$", events[0]), files
        assert not any(f".{pid1}." in f for f in files)
        alerts_file = out / scenario / "alerts.jsonl"
        written = alerts_file.read_text().splitlines() if alerts_file.exists() else []
        assert [json.loads(line) for line in written] == ranks[0][scenario]["delivered"]
    assert not (out / "ddp_data" / "alerts.jsonl").exists()


def test_layer_names_carry_no_wrapper_prefix(run):
    for scenario in DDP_SCENARIOS + DRIVEN_SCENARIOS + FSDP_SCENARIOS:
        for snapshot in run[1][0][scenario]["snapshots"]:
            assert set(snapshot["stats"]["grad_norm"]) == {"0", "2", "total"}, scenario
            assert set(snapshot["stats"]["param_grad_norm"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert run[1][0]["ddp_data"]["layer_types"] == ["0", "1", "2", "model"]


@pytest.mark.parametrize("scenario, copies", [("fsdp2", 1), ("fsdp1", 1), ("hsdp", 2)])
def test_fsdp_norms_and_update_ratios_from_shards_match_the_unsharded_model(run, scenario, copies):
    record = run[1][0][scenario]
    # how many ranks hold each local shard: 1 when fully sharded, 2 under HSDP's (replicate=2, shard=1) mesh
    assert record["replica_counts"] == [copies] * 4
    by_step = {s["step"]: s["stats"] for s in record["snapshots"]}
    assert sorted(by_step) == [0, 5, 10]
    for step, expected in record["expected"].items():
        for family, values in expected.items():
            got = {layer: by_step[int(step)][family][layer] for layer in values}
            assert got == pytest.approx(values, rel=1e-4), (step, family)
    assert record["alerts"] == []  # activation statistics are reduced under FSDP too: no dead units


@pytest.mark.parametrize("scenario", ["fsdp2", "hsdp"])
def test_attach_time_facts_of_sharded_weights_are_those_of_the_whole_weights_on_every_rank(run, scenario):
    rank0, rank1 = both(run, scenario)
    assert rank0["facts"] == rank1["facts"]
    for name in ("init_gain", "bias_mean"):
        assert rank0["facts"][name] == pytest.approx(rank0["unsharded_facts"][name], rel=1e-5, abs=1e-7)


# -- single-process pieces ---------------------------------------------------------------------
def test_without_a_process_group_the_monitor_is_rank_0_of_1():
    model = nn.Sequential(nn.Linear(2, 2))
    assert rank_and_world() == (0, 1)
    assert replica_counts(model, list(parameter_layers(model))) == [1.0, 1.0]
    assert Monitor(model).world_size == 1


def test_clean_name_drops_wrapper_segments_wherever_they_stand():
    assert clean_name("layer1._fsdp_wrapped_module") == "layer1"
    assert clean_name("_orig_mod.features._checkpoint_wrapped_module.0.weight") == "features.0.weight"
    assert clean_name("_fsdp_wrapped_module") == "model"
    assert clean_name("my_orig_mod_net.fc") == "my_orig_mod_net.fc"


def test_root_parameters_of_a_compiled_wrapper_belong_to_the_root_layer():
    class Compiled(nn.Module):  # stands in for torch.compile's OptimizedModule naming
        def __init__(self):
            super().__init__()
            self._orig_mod = nn.Linear(2, 2)

    assert [(n, layer) for n, layer, _ in parameter_layers(Compiled())] == [("weight", "model"), ("bias", "model")]


def test_a_monitor_without_loss_or_gradients_reports_none():
    model = nn.Sequential(nn.Linear(2, 2))
    monitor = Monitor(model, check_every=1)
    model(torch.ones(1, 2))
    monitor.step()
    assert monitor.last_snapshot.loss is None and monitor.last_snapshot.val_loss is None
    assert "grad_norm" not in monitor.last_snapshot.stats

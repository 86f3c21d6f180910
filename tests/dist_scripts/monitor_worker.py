"""One torchrun worker that runs every distributed scenario of tests/test_distributed.py.

Run as ``torchrun --standalone --nproc_per_node=2 monitor_worker.py OUT_DIR [SCENARIO ...]`` (gloo, CPU).
Each rank writes ``OUT_DIR/rank<r>.json``: per scenario, what the monitor reported (alerts, snapshots,
collectives per step) and references that each rank computes alone from every rank's data (inputs
are generated from seeds, so any rank can rebuild the whole global batch without a collective).
Scenarios share one process group so the suite pays torchrun's start-up once.

``TORCHHEALTH_TEST_DEVICE=cuda`` runs the models on the GPU (each rank on ``cuda:<local_rank % count>``;
several ranks may share one GPU under gloo); ``TORCHHEALTH_TEST_BACKEND`` picks the backend (default
gloo; nccl needs one GPU per rank). See fsdp_cuda_check.sh.

Decisions come from the shipped detectors and from small test-only detectors appended to
``monitor.detectors`` (the real code path, a rule defined here, independent of the shipped thresholds).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import torchhealth
from torchhealth.detectors import Alert, Detector
from torchhealth.facts import ModelFacts

DEVICE = torch.device(os.environ.get("TORCHHEALTH_TEST_DEVICE", "cpu"))
BACKEND = os.environ.get("TORCHHEALTH_TEST_BACKEND", "gloo")
BATCH = 8
CHECK_EVERY = 5
HIDDEN = 8


# -- test-only decision rules ------------------------------------------------------------------
class DeadUnitsRule(Detector):
    """Flags any layer whose snapshot reports a dead unit."""

    kind = "test_dead_units"

    def check(self, snapshot, facts):
        return [Alert(self.kind, layer, snapshot.step, "warning", value, "dead units")
                for layer, value in sorted(snapshot.family("dead_units").items()) if value > 0]


class NonFiniteRule(Detector):
    """Flags the first non-finite source of a snapshot (critical)."""

    kind = "test_nonfinite"

    def check(self, snapshot, facts):
        if not snapshot.nonfinite:
            return []
        first = min(snapshot.nonfinite.values())
        sources = sorted(s for s, step in snapshot.nonfinite.items() if step == first)
        return [Alert(self.kind, None, snapshot.step, "critical", float(first), f"non-finite from {sources}",
                      evidence={"first_step": first, "sources": sorted(snapshot.nonfinite)})]


class LossRule(Detector):
    """Flags a mean loss above a threshold (critical)."""

    kind = "test_loss"

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def check(self, snapshot, facts):
        if snapshot.loss is not None and snapshot.loss > self.threshold:
            return [Alert(self.kind, None, snapshot.step, "critical", snapshot.loss, "loss too high")]
        return []


# -- data and models ---------------------------------------------------------------------------
def make_model() -> nn.Sequential:
    """Linear(4, 8) -> ReLU -> Linear(8, 2); hidden units 0-3 copy +x, units 4-7 copy -x."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.cat([torch.eye(4), -torch.eye(4)]))
        model[0].bias.zero_()
    return model


def batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank 0 sees positive inputs, rank 1 negative ones: each rank alone leaves half the units dead."""
    g = torch.Generator().manual_seed(1000 * rank + step)
    x = torch.randn(BATCH, 4, generator=g).abs() + 0.1
    y = torch.randn(BATCH, 2, generator=g)
    return (x if rank == 0 else -x), y


def global_batch(world: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(batch(r, step) for r in range(world)))
    return torch.cat(xs), torch.cat(ys)


def locally_dead_fraction(rank: int, steps: int) -> float:
    """Fraction of hidden units that never fire on this rank's own inputs (the scenario's premise)."""
    model = make_model()
    with torch.no_grad():
        fired = sum((model[1](model[0](batch(rank, s)[0])) > 0).sum(0) for s in range(steps))
    return float((fired == 0).float().mean())


class Collectives:
    """Counts collectives: wrapped ``torch.distributed.all_reduce`` calls and the default group's
    sequence number (which every collective on the group advances, whatever API issued it)."""

    def __init__(self) -> None:
        self.all_reduce_calls = 0
        original = dist.all_reduce

        def counting_all_reduce(*args, **kwargs):
            self.all_reduce_calls += 1
            return original(*args, **kwargs)

        dist.all_reduce = counting_all_reduce

    def around(self, fn):
        """Runs ``fn()``; returns its result and ``(all_reduce calls, group collectives)`` it issued."""
        group = dist.distributed_c10d._get_default_group()
        calls, seq = self.all_reduce_calls, group._get_sequence_number_for_group()
        try:
            result = fn()
        finally:
            counts = (self.all_reduce_calls - calls, group._get_sequence_number_for_group() - seq)
        return result, counts


def snapshot_record(snapshot: torchhealth.Snapshot) -> dict:
    return {"step": snapshot.step, "stats": snapshot.stats, "loss": snapshot.loss,
            "nonfinite": snapshot.nonfinite, "window_samples": snapshot.window_samples}


def train(model: nn.Module, monitor: torchhealth.Monitor, optimizer, rank: int, steps: int, counter: Collectives,
          fault=None, forward=None) -> dict:
    """A plain loop: forward, backward, monitor.step, optimizer.step. Records what the monitor saw.

    ``forward(model, x, step)`` replaces ``model(x)`` (a model that takes a branch from some step on).
    """
    # A check's statistics are read one step later when they stay on a GPU (NCCL reduces them there)
    record = {"alerts": [], "snapshots": [], "collectives": [], "raised_at": None,
              "read_lag": int(DEVICE.type == "cuda" and dist.get_backend() == "nccl")}
    last = None
    for step in range(steps):
        x, y = batch(rank, step)
        if fault is not None:
            x, y = fault(step, x, y)
        x, y = x.to(DEVICE), y.to(DEVICE)
        loss = nn.functional.mse_loss(model(x) if forward is None else forward(model, x, step), y)
        loss.backward()
        try:
            alerts, counts = counter.around(lambda: monitor.step(loss))
        except torchhealth.TrainingHealthError as error:
            record["raised_at"] = step
            record["raised_alert"] = error.alert.to_dict()
            record["local_loss_at_raise"] = float(loss.detach())
            break
        record["collectives"].append([step, *counts])
        record["alerts"] += [a.to_dict() for a in alerts]
        snapshot = getattr(monitor, "last_snapshot", None)
        if snapshot is not None and snapshot is not last:
            record["snapshots"].append(snapshot_record(snapshot))
            last = snapshot
        optimizer.step()
        optimizer.zero_grad()
    record["delivered"] = [a.to_dict() for a in monitor.alerts]  # everything the sinks received
    return {**record, **agreement_record(monitor)}


def agreement_record(monitor: torchhealth.Monitor) -> dict:
    """How often the ranks exchanged layouts, which parts are off, the forward order the detectors use."""
    return {"exchanges": monitor._agreement.exchanges, "disabled": sorted(monitor.guard.disabled),
            "forward_order": list(monitor.facts.forward_order)}


def reference_step0(world: int) -> dict:
    """Global-batch statistics of step 0 computed on one rank without any collective."""
    model = make_model()
    x, y = global_batch(world, 0)
    hidden = model[1](model[0](x))
    per_rank_losses = [nn.functional.mse_loss(model(xr), yr) for xr, yr in (batch(r, 0) for r in range(world))]
    loss = torch.stack(per_rank_losses).mean()  # DDP averages gradients: d(mean of rank losses)
    loss.backward()
    model.requires_grad_(False)
    return {
        "loss": float(loss.detach()),
        "grad_norm": {"0": math.hypot(float(model[0].weight.grad.norm()), float(model[0].bias.grad.norm())),
                      "2": math.hypot(float(model[2].weight.grad.norm()), float(model[2].bias.grad.norm()))},
        "weight_norm": {"0": math.hypot(float(model[0].weight.norm()), float(model[0].bias.norm())),
                        "2": math.hypot(float(model[2].weight.norm()), float(model[2].bias.norm()))},
        "zero_fraction": {"1": float((hidden == 0).float().mean())},
    }


# -- scenarios ---------------------------------------------------------------------------------
def ddp_monitor(model, out_dir, name, optimizer=None, **options):
    ddp = DistributedDataParallel(model, device_ids=[DEVICE.index] if DEVICE.type == "cuda" else None)
    monitor = torchhealth.Monitor(ddp, optimizer=optimizer, log_dir=os.path.join(out_dir, name),
                                  check_every=CHECK_EVERY, sample_every=1, window_samples=64, **options)
    return ddp, monitor


def scenario_ddp_data(rank, world, out_dir, counter):
    """Ranks see different data; units dead on each rank's inputs are alive on the other's."""
    model = make_model().to(DEVICE)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    ddp, monitor = ddp_monitor(model, out_dir, "ddp_data", optimizer, on_alert=[lambda a: None])
    monitor.detectors.append(DeadUnitsRule())
    record = train(ddp, monitor, optimizer, rank, 20, counter)
    monitor.close()
    record["locally_dead_fraction"] = locally_dead_fraction(rank, 20)
    record["reference_step0"] = reference_step0(world)
    record["layer_types"] = sorted(monitor.facts.layer_types)
    return record


def nan_input(ranks, at_step):
    def fault(step, x, y):
        return (x * float("nan"), y) if step == at_step and dist.get_rank() in ranks else (x, y)
    return fault


def scenario_fault(rank, world, out_dir, counter, name, faulty_ranks):
    """NaN inputs at step 7 on ``faulty_ranks``; the check at step 10 must see it on every rank."""
    model = make_model().to(DEVICE)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    ddp, monitor = ddp_monitor(model, out_dir, name, optimizer, on_alert=[lambda a: None])
    monitor.detectors.append(NonFiniteRule())
    record = train(ddp, monitor, optimizer, rank, 12, counter, fault=nan_input(faulty_ranks, 7))
    monitor.close()
    return record


def scenario_dead_everywhere(rank, world, out_dir, counter):
    """Every rank sees positive inputs only: units 4-7 (which copy -x) are dead on the whole job."""
    model = make_model().to(DEVICE)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    ddp, monitor = ddp_monitor(model, out_dir, "dead_everywhere", optimizer, on_alert=[lambda a: None])
    record = train(ddp, monitor, optimizer, rank, 11, counter, fault=lambda step, x, y: (x.abs(), y))
    monitor.close()
    return record


def scenario_raise(rank, world, out_dir, counter, name, shipped_detectors):
    """Only the last rank's loss explodes (from step 12); the global mean decides for every rank."""
    model = make_model().to(DEVICE)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # keep the loss scale fixed

    def fault(step, x, y):
        return (x, y * 1000.0) if step >= 12 and dist.get_rank() == world - 1 else (x, y)

    ddp, monitor = ddp_monitor(model, out_dir, name, optimizer, on_alert="raise")
    monitor.detectors = (monitor.detectors if shipped_detectors else []) + [LossRule(threshold=1000.0)]
    record = train(ddp, monitor, optimizer, rank, 30, counter, fault=fault)
    monitor.close()
    dist.barrier()  # every rank must get here: none is left waiting in DDP's all-reduce
    record["passed_barrier"] = True
    return record


def scenario_watch_accumulate(rank, world, out_dir, counter):
    """``torchhealth.watch`` with 2-batch gradient accumulation, the first backward under ``no_sync``:
    the monitor steps from the optimizer, so it reads the gradients DDP averaged at the second backward."""
    model = make_model().to(DEVICE)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    ddp = DistributedDataParallel(model, device_ids=[DEVICE.index] if DEVICE.type == "cuda" else None)
    monitor = torchhealth.watch(ddp, optimizer, check_every=CHECK_EVERY, sample_every=1, on_alert=[lambda a: None])
    record = {"collectives": [], "snapshots": []}
    for step in range(6):
        for micro in range(2):
            x, y = (t.to(DEVICE) for t in batch(rank, 2 * step + micro))
            with ddp.no_sync() if micro == 0 else contextlib.nullcontext():
                nn.functional.mse_loss(ddp(x), y).backward()
        _, counts = counter.around(optimizer.step)
        record["collectives"].append([step, *counts])
        if step % CHECK_EVERY == 0:
            record["snapshots"].append(snapshot_record(monitor.last_snapshot))
        optimizer.zero_grad()
    monitor.close()
    record.update(agreement_record(monitor))
    reference = make_model()
    for micro in range(2):  # mean over ranks of each rank's summed micro-batch gradients, at step 0
        torch.stack([nn.functional.mse_loss(reference(x), y) for x, y in (batch(r, micro) for r in range(world))]
                    ).mean().backward()
    record["reference_step0_grad_norm"] = float(torch.stack([p.grad.norm() for p in reference.parameters()]).norm())
    return record


def scenario_fsdp(rank, world, out_dir, counter, wrap):
    """Sharded parameters: per-layer gradient and weight norms, update ratios against a plain model
    trained in lockstep on the global batch."""
    reference = make_model()
    model = wrap(make_model().to(DEVICE))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ref_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    monitor = torchhealth.Monitor(model, optimizer=optimizer, log_dir=None, check_every=CHECK_EVERY,
                                  log_every=CHECK_EVERY, sample_every=1, window_samples=64,
                                  on_alert=[lambda a: None])
    monitor.detectors.append(DeadUnitsRule())
    record = train(model, monitor, optimizer, rank, 11, counter)
    monitor.close()
    expected = {}
    for step in range(11):
        losses = [nn.functional.mse_loss(reference(xr), yr) for xr, yr in (batch(r, step) for r in range(world))]
        torch.stack(losses).mean().backward()
        if step % CHECK_EVERY == 0:
            layers = {"0": [reference[0].weight, reference[0].bias], "2": [reference[2].weight, reference[2].bias]}
            expected[step] = {
                "grad_norm": {k: float(torch.stack([p.grad.norm() for p in ps]).norm()) for k, ps in layers.items()},
                "weight_norm": {k: float(torch.stack([p.detach().norm() for p in ps]).norm()) for k, ps in layers.items()},
            }
            if step > 0:
                expected[step]["update_ratio"] = {k: before_update[k] for k in layers}
        if (step + 1) % CHECK_EVERY == 0:
            before = [p.detach().clone() for p in reference.parameters()]
        ref_optimizer.step()
        if (step + 1) % CHECK_EVERY == 0:
            diffs = [(p.detach() - b, b) for p, b in zip(reference.parameters(), before)]
            ratio = lambda pairs: float(torch.stack([d.norm() for d, _ in pairs]).norm()
                                        / torch.stack([b.norm() for _, b in pairs]).norm())
            before_update = {"0": ratio(diffs[:2]), "2": ratio(diffs[2:])}
        ref_optimizer.zero_grad()
    record["expected"] = expected
    record["param_names"] = [name for name, _, _ in monitor.collectors["gradients"].params]
    record["replica_counts"] = monitor.collectors["gradients"].index.copies.tolist()
    unsharded = ModelFacts.from_model(make_model())
    record["facts"] = {"init_gain": monitor.facts.init_gain, "bias_mean": monitor.facts.bias_mean}
    record["unsharded_facts"] = {"init_gain": unsharded.init_gain, "bias_mean": unsharded.bias_mean}
    return record


def wrap_fsdp2(model, hsdp=False):
    """fully_shard over all ranks, or HSDP: replicated across all ranks, each shard group of one rank."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    world = dist.get_world_size()
    mesh = init_device_mesh(DEVICE.type, (world, 1), mesh_dim_names=("replicate", "shard")) if hsdp else \
        init_device_mesh(DEVICE.type, (world,))
    for layer in (model[0], model[2]):
        fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def wrap_fsdp1(model):
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    return FullyShardedDataParallel(model, device_id=DEVICE, use_orig_params=True,
                                    auto_wrap_policy=ModuleWrapPolicy({nn.Linear}))


# -- models whose structure differs between ranks (docs/distributed.md, "Ranks agree on the layout") --
class Expert(nn.Module):
    """Linear -> ReLU -> Linear; with ``functional``, also ``F.relu`` on one more layer inside ``forward``."""

    def __init__(self, functional: bool) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(4, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 2)
        self.extra = nn.Linear(HIDDEN, HIDDEN) if functional else None

    def forward(self, x):
        h = self.act(self.fc1(x))
        if self.extra is not None:
            h = nn.functional.relu(self.extra(h))
        return self.fc2(h)


class MixtureOfExperts(nn.Module):
    """Routes each sample to expert 0 when its first feature is positive, else to expert 1: with
    ``batch``'s data, rank 0 runs only expert 0 and rank 1 only expert 1 (and its functional ReLU).
    On the data routed to it every unit of an expert fires; on the other rank's, none runs at all.
    With ``spare``, the first two samples go to expert 2 instead (which is otherwise never used)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.experts = nn.ModuleList([Expert(functional=False), Expert(functional=True), Expert(functional=False)])
        with torch.no_grad():
            for sign, expert in zip((1, -1), self.experts):  # rank 0's inputs are positive, rank 1's negative
                expert.fc1.weight.abs_().mul_(sign)
            self.experts[1].extra.weight.abs_()

    def forward(self, x, spare: bool = False):
        route = (x[:, 0] < 0).long()
        if spare:
            route[:2] = 2
        out = x.new_zeros(x.shape[0], 2)
        for index, expert in enumerate(self.experts):
            chosen = route == index
            if chosen.any():
                out = out.index_put((chosen,), expert(x[chosen]))
        return out


SPARE_UNTIL = 3  # rank 0 routes two samples a step to the spare expert before this step, none after


def scenario_moe(rank, world, out_dir, counter):
    """Each rank's data goes to a different expert; one expert's functional ReLU runs on one rank only."""
    model = MixtureOfExperts().to(DEVICE)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    ddp = DistributedDataParallel(model, device_ids=[DEVICE.index] if DEVICE.type == "cuda" else None,
                                  find_unused_parameters=True)
    monitor = torchhealth.Monitor(ddp, optimizer=optimizer, log_dir=os.path.join(out_dir, "moe"),
                                  check_every=CHECK_EVERY, log_every=CHECK_EVERY, sample_every=1, window_samples=64,
                                  on_alert=[lambda a: None])
    record = train(ddp, monitor, optimizer, rank, 21, counter,
                   forward=lambda m, x, step: m(x, spare=step < SPARE_UNTIL and dist.get_rank() == 0))
    monitor.close()
    record["sites_seen_here"] = sorted(site.name for site in monitor.collectors["activations"].sites.values() if not site.placeholder)
    return record


class Branchy(nn.Module):
    """A trunk, and a branch (Linear -> Tanh) only on the steps that take it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(4, HIDDEN), nn.ReLU())
        self.branch = nn.Sequential(nn.Linear(HIDDEN, HIDDEN), nn.Tanh())
        self.head = nn.Linear(HIDDEN, 2)

    def forward(self, x, take: bool):
        h = self.trunk(x)
        if take:
            h = h + self.branch(h)
        return self.head(h)


BRANCH_FROM = {0: 13, 1: 7}  # the step from which each rank takes the branch


def scenario_lazy_branch(rank, world, out_dir, counter):
    """Activation sites created lazily, on one rank first: the branch runs on rank 1 from step 7, on rank 0 from 13."""
    model = Branchy().to(DEVICE)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    ddp = DistributedDataParallel(model, device_ids=[DEVICE.index] if DEVICE.type == "cuda" else None,
                                  find_unused_parameters=True)
    monitor = torchhealth.Monitor(ddp, optimizer=optimizer, log_dir=None, check_every=CHECK_EVERY,
                                  sample_every=1, window_samples=64, on_alert=[lambda a: None])
    record = train(ddp, monitor, optimizer, rank, 21, counter,
                   forward=lambda m, x, step: m(x, step >= BRANCH_FROM[dist.get_rank()]))
    monitor.close()
    return record


class LogRecords(logging.Handler):
    """Keeps the messages of the ``torchhealth`` logger while installed."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self):
        logging.getLogger("torchhealth").addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger("torchhealth").removeHandler(self)


FAIL_FROM = 10


def scenario_fails_on_one_rank(rank, world, out_dir, counter, name, owner, method):
    """``owner.method`` (looked up on the monitor) raises on the last rank only, from the check at step 10."""
    model = make_model().to(DEVICE)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    ddp, monitor = ddp_monitor(model, out_dir, name, optimizer, on_alert=[lambda a: None])
    target = owner(monitor)
    works = getattr(target, method)

    def failing(*args, **kwargs):
        if monitor.step_count >= FAIL_FROM and dist.get_rank() == world - 1:
            raise RuntimeError(f"injected failure in {name}")
        return works(*args, **kwargs)

    setattr(target, method, failing)
    try:
        with LogRecords() as log:
            record = train(ddp, monitor, optimizer, rank, 21, counter)
    finally:
        setattr(target, method, works)
    monitor.close()
    dist.barrier()  # every rank must get here: none is left waiting in a collective
    record["passed_barrier"] = True
    record["log"] = log.messages
    return record


def scenario_nan_raise(rank, world, out_dir, counter):
    """NaN inputs on the last rank only, at step 7, with on_alert="raise": every rank must stop at one step."""
    model = make_model().to(DEVICE)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    ddp, monitor = ddp_monitor(model, out_dir, "nan_raise", optimizer, on_alert="raise")
    record = train(ddp, monitor, optimizer, rank, 20, counter, fault=nan_input({world - 1}, 7))
    monitor.close()
    dist.barrier()  # every rank must get here: none is left waiting in a collective
    record["passed_barrier"] = True
    return record


def scenario_wrapped_differently(rank, world, out_dir, counter):
    """Rank 0 passes the DDP wrapper, the other ranks the module inside it: the same statistics, so allowed."""
    model = make_model().to(DEVICE)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    ddp = DistributedDataParallel(model, device_ids=[DEVICE.index] if DEVICE.type == "cuda" else None)
    monitor = torchhealth.Monitor(ddp if rank == 0 else ddp.module, optimizer=optimizer, check_every=CHECK_EVERY,
                                  sample_every=1, window_samples=64, on_alert=[lambda a: None])
    record = train(ddp, monitor, optimizer, rank, 11, counter)
    monitor.close()
    return record


def refused(make) -> dict:
    """What making a monitor raised: ``{"error": type, "message": ...}`` (``{"error": None}`` if it did not)."""
    try:
        make().close()
    except (ValueError, RuntimeError) as error:
        return {"error": type(error).__name__, "message": str(error)}
    return {"error": None}


def scenario_refused(rank, world, out_dir, counter):
    """Monitors that cannot work alike on every rank are refused at construction, on every rank."""
    record = {"check_every": refused(lambda: torchhealth.Monitor(make_model(), check_every=5 * (rank + 1))),
              "optimizer": refused(lambda: torchhealth.Monitor(
                  make_model(), optimizer=torch.optim.SGD(make_model().parameters(), lr=0.1) if rank == 0 else None))}
    other = make_model() if rank == 0 else nn.Sequential(*make_model(), nn.ReLU(), nn.Linear(2, 2))
    record["model"] = refused(lambda: torchhealth.Monitor(other))
    dist.barrier()
    # rank 0 alone makes one: it must say so instead of waiting in the first check's collective
    if rank == 0:
        torchhealth.distributed.HANDSHAKE_TIMEOUT, timeout = 3.0, torchhealth.distributed.HANDSHAKE_TIMEOUT
        record["one_rank_only"] = refused(lambda: torchhealth.Monitor(make_model()))
        torchhealth.distributed.HANDSHAKE_TIMEOUT = timeout
    else:
        next(torchhealth.distributed._monitors_made)  # keeps this process's count of monitors in step
    dist.barrier()
    record["passed_barrier"] = True
    return record


def scenario_custom_collector(rank, world, out_dir, counter):
    """A collector and a detector of the user's own (examples/custom_statistic.py), added through the
    public API: their state joins the one reduction, and every rank sees the same values and alerts."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples", "custom_statistic.py")
    spec = importlib.util.spec_from_file_location("custom_statistic", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    model = make_model().to(DEVICE)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    ddp, monitor = ddp_monitor(model, out_dir, "custom_collector", optimizer, on_alert=[lambda a: None], log_every=5,
                               collectors=[*torchhealth.default_collectors(), example.GradientSNR()],
                               detectors=[*torchhealth.default_detectors(), example.NoisyGradients(threshold=1e9, checks=2)])
    record = train(ddp, monitor, optimizer, rank, 20, counter)
    monitor.close()
    return record


SCENARIOS = {
    "ddp_data": scenario_ddp_data,
    "fault_every_rank": lambda r, w, o, c: scenario_fault(r, w, o, c, "fault_every_rank", range(w)),
    "fault_one_rank": lambda r, w, o, c: scenario_fault(r, w, o, c, "fault_one_rank", {w - 1}),
    "dead_everywhere": scenario_dead_everywhere,
    "raise": lambda r, w, o, c: scenario_raise(r, w, o, c, "raise", shipped_detectors=True),
    "raise_test_rule": lambda r, w, o, c: scenario_raise(r, w, o, c, "raise_test_rule", shipped_detectors=False),
    "watch_accumulate": scenario_watch_accumulate,
    "fsdp2": lambda *a: scenario_fsdp(*a, wrap=wrap_fsdp2),
    "fsdp1": lambda *a: scenario_fsdp(*a, wrap=wrap_fsdp1),
    "hsdp": lambda *a: scenario_fsdp(*a, wrap=lambda m: wrap_fsdp2(m, hsdp=True)),
    "moe": scenario_moe,
    "lazy_branch": scenario_lazy_branch,
    # the gradient collector's state(); reading a check's statistics after the all-reduce
    "collector_fails": lambda *a: scenario_fails_on_one_rank(*a, "collector_fails", lambda m: m.collectors["gradients"],
                                                             "state"),
    "check_fails": lambda *a: scenario_fails_on_one_rank(*a, "check_fails", lambda m: m, "_finish_check"),
    # the agreement itself, on rank 1, before the check's all-reduce
    "agreement_fails": lambda *a: scenario_fails_on_one_rank(*a, "agreement_fails", lambda m: torchhealth.distributed,
                                                             "_describe"),
    # an activation hook, inside rank 1's forward
    "hooks_fail": lambda *a: scenario_fails_on_one_rank(*a, "hooks_fail", lambda m: m.collectors["activations"], "_observe"),
    "nan_raise": scenario_nan_raise,
    "wrapped_differently": scenario_wrapped_differently,
    "refused": scenario_refused,
    "custom_collector": scenario_custom_collector,
}


def main() -> None:
    global DEVICE
    out_dir, names = sys.argv[1], sys.argv[2:] or list(SCENARIOS)
    if DEVICE.type == "cuda":
        DEVICE = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        torch.cuda.set_device(DEVICE)
    dist.init_process_group(BACKEND, timeout=timedelta(seconds=30))
    rank, world = dist.get_rank(), dist.get_world_size()
    counter = Collectives()
    results = {"pid": os.getpid(), "world": world, "device": str(DEVICE), "backend": BACKEND,
               "torch": torch.__version__}
    for name in names:
        try:
            results[name] = SCENARIOS[name](rank, world, out_dir, counter)
        except Exception as error:  # recorded so the test shows which scenario failed and why
            results[name] = {"error": f"{type(error).__name__}: {error}"}
            raise
        finally:
            with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
                json.dump(results, f, indent=1, default=str)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

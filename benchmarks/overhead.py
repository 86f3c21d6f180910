"""Step-time and memory overhead of torchhealth vs plain training and the usual ways of monitoring.

Every arm trains the SAME model and optimizer in turn, in interleaved blocks (each round runs every
arm once, in a shuffled order), so that no arm gains from a luckier copy of the model in memory or
from always following the same arm:

- ``plain``: forward, backward, optimizer step.
- ``plain_again``: the same again: an A/A control, whose "overhead" is the resolution of the
  measurement on this machine (other processes, frequency changes).
- ``torchhealth``: the same plus ``Monitor(model, optimizer, log_dir=tmp)`` at its defaults. The
  monitor counts only its own steps, so its blocks follow its schedule (checks, sampled forwards,
  log steps) as if it had trained alone; between its blocks it samples nothing.
- ``grad_norm_item``: a per-parameter ``p.grad.norm().item()`` pass every step (the pattern of
  Lightning's ``grad_norm`` + logging, or Ignite's ``GradsScalarHandler``).
- ``+relu_sparsity_item``: that plus a forward hook on every ReLU module computing
  ``(out == 0).float().mean().item()`` every step.

With ``--compile`` both models are compiled (``torch.compile``, default mode) once the monitor has
attached, the twin as a class of its own (dynamo does not guard on module hooks, so a twin of the
same class would lend the monitored model a graph without them); the warm-up round traces the
graphs, and the run refuses figures unless the monitor's last check has activation statistics. A
launch-bound loop is what compiling is for; it shows what the monitor costs there.
``+relu_sparsity_item`` is refused with it: hooks added to a compiled model after it was traced do
not run.

Every step (on CPU) or block (on CUDA) is timed by two clocks. Wall-clock is what the training
loop waits for. Process CPU time counts every thread of this process (TensorBoard's writer thread
too): what the monitor costs the machine, and what work moved off the training thread would still
cost (docs/performance.md, "Off the training thread"). Both overheads are reported. On CPU the
steps are timed in blocks of ``check_every`` steps; the monitor's steps are classed by kind and
each kind's median is weighted by how often it occurs in a logging interval (see ``measure``),
with the part of each kind spent inside ``monitor.step()``. On CUDA whole blocks of one logging interval
are timed after a synchronize, and memory is ``torch.cuda.max_memory_allocated``
during each block minus what was allocated when it started (working memory: activations,
gradients, the monitor's weight copy). The monitor state column is the bytes of the tensors the
monitor keeps between steps (O(parameters + units)).

Where a process happens to place its tensors moves a small model's step by a few percent, and
that placement is fixed for the life of the process, so no number of rounds averages it away.
``--processes N`` therefore repeats the whole measurement in N fresh processes and reports, per
arm, the median over processes and their range.

Usage::

    python benchmarks/overhead.py --processes 5 --out overhead_cpu.md   # CPU models, 1 thread
    python benchmarks/overhead.py --device cuda --out overhead_cuda.md  # adds ResNet-50, MLP-24x1024
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torchhealth  # noqa: E402
from torchhealth.collectors.base import state_nbytes  # noqa: E402
from torchhealth.layers import activation_kind  # noqa: E402

ARMS = ("plain", "plain_again", "torchhealth", "grad_norm_item", "+relu_sparsity_item")


@dataclass
class Workload:
    """A model with a fixed batch and a loss function."""

    name: str
    model: nn.Module
    inputs: torch.Tensor
    target: torch.Tensor
    autocast: torch.dtype | None = None


# -- models ------------------------------------------------------------------------------------
def mlp(depth: int, width: int, batch: int, device: str) -> Workload:
    layers: list[nn.Module] = []
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.ReLU()]
    layers.append(nn.Linear(width, 10))
    return Workload(f"MLP {depth}x{width} ReLU, batch {batch}", nn.Sequential(*layers),
                    torch.randn(batch, width), torch.randint(0, 10, (batch,)))


def convnet(batch: int = 32) -> Workload:
    channels = [3, 16, 16, 32, 32, 64, 64]
    layers: list[nn.Module] = []
    for i in range(6):
        layers += [nn.Conv2d(channels[i], channels[i + 1], 3, padding=1, bias=False),
                   nn.BatchNorm2d(channels[i + 1]), nn.ReLU(inplace=True)]
        if i % 2 == 1:
            layers.append(nn.MaxPool2d(2))
    layers += [nn.Flatten(), nn.Linear(64 * 4 * 4, 10)]
    return Workload(f"Conv 6x(BN, inplace ReLU) 32x32, batch {batch}", nn.Sequential(*layers),
                    torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,)))


class Encoder(nn.Module):
    """A 3-layer transformer encoder classifier (its ReLU is functional: F.relu inside the layer)."""

    def __init__(self, d: int = 64, layers: int = 3) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(d, nhead=4, dim_feedforward=4 * d, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(dim=1))


class LSTMClassifier(nn.Module):
    """A 2-layer LSTM over a sequence, classifying from the last hidden state."""

    def __init__(self, d_in: int = 32, hidden: int = 128) -> None:
        super().__init__()
        self.lstm = nn.LSTM(d_in, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def resnet50() -> Workload | None:
    try:
        import torchvision
    except ImportError:
        print("torchvision is not installed: skipping ResNet-50", flush=True)
        return None
    return Workload("ResNet-50 bf16 autocast, batch 64", torchvision.models.resnet50(weights=None),
                    torch.randn(64, 3, 224, 224), torch.randint(0, 1000, (64,)), autocast=torch.bfloat16)


def workloads(device: str, names: list[str] | None) -> list[Workload]:
    builders: dict[str, Callable[[], Workload | None]] = {
        "mlp16": lambda: mlp(16, 256, 64, device),
        "conv6": convnet,
        "transformer": lambda: Workload("Transformer encoder 3 layers d=64 seq 32, batch 32", Encoder(),
                                        torch.randn(32, 32, 64), torch.randint(0, 10, (32,))),
        "lstm": lambda: Workload("LSTM 2x128 seq 32, batch 32", LSTMClassifier(),
                                 torch.randn(32, 32, 32), torch.randint(0, 10, (32,))),
    }
    if device == "cuda":
        builders["resnet50"] = resnet50
        builders["mlp24"] = lambda: mlp(24, 1024, 512, device)
        builders["mlp24_b2048"] = lambda: mlp(24, 1024, 2048, device)  # the same, clearly GPU-bound
    out = []
    for name in names or list(builders):
        if name not in builders:
            raise SystemExit(f"unknown model {name!r} for --device {device}; choose from {', '.join(builders)}")
        workload = builders[name]()
        if workload is not None:
            out.append(workload)
    return out


# -- the arms ------------------------------------------------------------------------------------
class Bench:
    """One model and optimizer that every arm trains in turn.

    All arms run on the same parameters, buffers, gradients and optimizer state, so none gains
    from a copy that happens to sit better in memory (separate copies differed by up to 7% on the
    CPU here). The monitor watches ``model``; the other arms train ``twin``, the same modules
    around the same tensors, which carries none of the monitor's hooks.
    """

    def __init__(self, w: Workload, device: torch.device, log_dir: str, compile: bool = False) -> None:
        torch.manual_seed(0)
        self.w, self.device = w, device
        self.model = copy.deepcopy(w.model).to(device)
        shared = {id(t): t for t in [*self.model.parameters(), *self.model.buffers()]}
        self.twin = copy.deepcopy(self.model, memo=shared)  # before the monitor hooks ``model``
        self.x, self.y = w.inputs.to(device), w.target.to(device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9)
        self.monitor = torchhealth.Monitor(self.model, self.opt, log_dir=log_dir, on_alert=[lambda alert: None])
        self.monitor.collectors["activations"].sampling = False
        self.relus = [(name, m) for name, m in self.twin.named_modules() if isinstance(m, nn.ReLU)]
        self.logged: dict[str, float] = {}
        self.inside = 0.0  # wall-clock seconds inside monitor.step() of the last monitored step
        self.run_model, self.run_twin = self.model, self.twin
        if compile:  # after the monitor attached, as docs/performance.md says, so its hooks are traced
            # Dynamo does not guard on module hooks: a twin of the same class would lend the monitored
            # model its graph, which has none. A class of its own keeps their graphs apart.
            twin_class = type(self.twin)
            self.twin.__class__ = type(f"Twin{twin_class.__name__}", (twin_class,), {})
            self.run_model, self.run_twin = torch.compile(self.model), torch.compile(self.twin)

    def _sparsity_hook(self, name: str):
        def hook(module, args, out):
            self.logged[f"sparsity/{name}"] = (out == 0).float().mean().item()
        return hook

    def kind_of_next_step(self, arm: str) -> str:
        """Which kind of step the arm's next step is (only the monitor's steps differ)."""
        if arm != "torchhealth":
            return "every"
        options, position = self.monitor.options, self.monitor.step_count % self.monitor.options.log_every
        if position == 0:
            return "log"
        if position % options.check_every == 0:
            return "check"
        if position == options.log_every - 1:
            return "before log"
        return "after check" if position % options.check_every == 1 else "other"

    def block(self, arm: str, steps: int, times: list[tuple[str, float, float, float]] | None = None) -> None:
        """Runs ``steps`` steps of ``arm``; with ``times``, appends each step's (kind, wall-clock seconds,
        process CPU seconds, wall-clock seconds inside ``monitor.step``) (a synchronize per step on CUDA)."""
        monitor = self.monitor if arm == "torchhealth" else None
        handles = ([m.register_forward_hook(self._sparsity_hook(name)) for name, m in self.relus]
                   if arm == "+relu_sparsity_item" else [])
        if monitor is not None:  # resume its sampling schedule
            monitor.collectors["activations"].sampling = monitor.step_count % monitor.options.sample_every == 0
        try:
            for _ in range(steps):
                if times is not None:
                    kind, t0 = self.kind_of_next_step(arm), clocks()
                self.step(monitor, arm)
                if times is not None:
                    sync(self.device)
                    t1 = clocks()
                    times.append((kind, t1[0] - t0[0], t1[1] - t0[1], self.inside if monitor is not None else 0.0))
        finally:
            for handle in handles:
                handle.remove()
            if monitor is not None:
                monitor.collectors["activations"].sampling = False

    def step(self, monitor, arm: str) -> None:
        with torch.autocast(self.device.type, dtype=self.w.autocast, enabled=self.w.autocast is not None):
            loss = F.cross_entropy((self.run_model if monitor is not None else self.run_twin)(self.x), self.y)
        loss.backward()
        if monitor is not None:
            t0 = time.perf_counter()
            monitor.step(loss)
            self.inside = time.perf_counter() - t0
        elif arm in ("grad_norm_item", "+relu_sparsity_item"):
            for name, p in self.model.named_parameters():
                if p.grad is not None:
                    self.logged[f"grad_norm/{name}"] = p.grad.norm().item()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def state_bytes(self) -> int:
        """Bytes of the tensors the monitor holds between steps."""
        return state_nbytes(list(self.monitor.collectors.values()))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def clocks() -> tuple[float, float]:
    """(wall-clock, process CPU time) now, in seconds."""
    return time.perf_counter(), time.process_time()


CLOCK_PREFIXES = ("", "cpu_")
"""The keys of what ``measure`` reports per clock, in the order of ``clocks()``: the step's wall-clock
(the training loop's wait; unprefixed) and its process CPU time (every thread's work; ``cpu_``)."""


# -- the measurement -----------------------------------------------------------------------------
def measure(w: Workload, device: torch.device, rounds: int, warmup: int, block_steps: int,
            budget_s: float = float("inf"), per_step: bool = False, arms: tuple[str, ...] = ARMS,
            compile: bool = False) -> dict[str, dict[str, float]]:
    """Interleaved rounds of ``block_steps`` steps per arm; returns per-arm step times and ratios,
    by wall-clock (``step_ms``, ``ratio``...) and by process CPU time (the same names prefixed ``cpu_``).

    A round runs each arm's block in turn, in a shuffled order (seeded by the round). With
    ``per_step`` every step is timed and classed by kind (the monitor's log step, check steps,
    the step after a check, the step before a log step, other steps; one kind for the other
    arms), each kind's time is its median over all rounds, and an arm's step time is the
    count-weighted mean of its kinds' medians over one logging interval: robust to noise from
    other processes, which moves single steps by tens of percent here. Without it (CUDA, where
    timing single steps would add a synchronize per step) a step's time is the median over
    rounds of block time / ``block_steps``, with blocks of one logging interval. Stops after
    ``rounds`` measured rounds, or earlier (but after at least 3) once ``budget_s`` seconds of
    wall-clock have passed.
    """
    started = time.perf_counter()
    options = torchhealth.MonitorOptions()
    with tempfile.TemporaryDirectory(prefix="torchhealth-bench-") as log_dir:
        bench = Bench(w, device, log_dir, compile)
        steps: dict[str, list[tuple[str, float, float, float]]] = {a: [] for a in arms}
        per_round: dict[str, list[tuple[float, float]]] = {a: [] for a in arms}  # (wall, cpu) per step
        peak: dict[str, int] = {a: 0 for a in arms}
        state = 0
        for r in range(warmup + rounds):
            order = random.Random(r).sample(arms, len(arms))  # no arm always follows the same one
            for arm in order:
                sync(device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                    start_bytes = torch.cuda.memory_allocated()
                times: list[tuple[str, float, float, float]] | None = [] if per_step else None
                t0 = clocks()
                bench.block(arm, block_steps, times)
                sync(device)
                t1 = clocks()
                if r >= warmup:
                    per_round[arm].append(((t1[0] - t0[0]) / block_steps, (t1[1] - t0[1]) / block_steps))
                    steps[arm] += times or []
                    if device.type == "cuda":
                        peak[arm] = max(peak[arm], torch.cuda.max_memory_allocated() - start_bytes)
            state = max(state, bench.state_bytes())
            if r + 1 - warmup >= 3 and time.perf_counter() - started > budget_s:
                print(f"  {w.name}: time budget reached after {r + 1 - warmup} measured rounds", flush=True)
                break
        snapshot = bench.monitor.last_snapshot
        watched = any(activation_kind(m) for m in bench.model.modules())
        bench.monitor.close()
        # the last check falls on a sampled step: without statistics, its forward ran without the monitor's hooks
        if watched and not (snapshot is not None and {"zero_fraction", "saturation"} & set(snapshot.stats)):
            raise SystemExit(f"{w.name}: the monitor's last check has no activation statistics (a compiled graph "
                             "without its hooks?); its figures would not be the monitor's")
        if bench.monitor.guard.disabled:  # a part that failed costs nothing from then on: not the monitor's cost
            raise SystemExit(f"{w.name}: parts of the monitor failed during the measurement "
                             f"({', '.join(sorted(bench.monitor.guard.disabled))}); its figures would not be the monitor's")

    def kinds(arm: str, c: int) -> dict[str, list[float]]:
        """Seconds of each kind of step by clock ``c`` (an index into ``CLOCK_PREFIXES``; its length: inside ``monitor.step``)."""
        out: dict[str, list[float]] = {}
        for kind, *seconds in steps[arm]:
            out.setdefault(kind, []).append(seconds[c])
        return out

    def interval_counts(arm: str) -> dict[str, int]:
        """How many steps of each kind one logging interval has."""
        if arm != "torchhealth":
            return {"every": options.log_every}
        checks = options.log_every // options.check_every
        return {"log": 1, "check": checks - 1, "after check": checks, "before log": 1,
                "other": options.log_every - 2 * checks - 1}

    def amortized(arm: str, c: int) -> float:
        if not per_step:
            return statistics.median(t[c] for t in per_round[arm])
        medians = {kind: statistics.median(v) for kind, v in kinds(arm, c).items()}
        counts = interval_counts(arm)
        missing = set(counts) - set(medians)
        if missing:
            raise SystemExit(f"{w.name}: no {', '.join(sorted(missing))} step was measured; measure at least "
                             f"one logging interval ({options.log_every} steps) per arm")
        return sum(n * medians[kind] for kind, n in counts.items()) / sum(counts.values())

    out = {}
    for a in arms:
        out[a] = {"peak_bytes": peak[a], "state_bytes": state if a == "torchhealth" else 0, "rounds": len(per_round[a])}
        for c, prefix in enumerate(CLOCK_PREFIXES):
            ratios = sorted(t[c] / p[c] for t, p in zip(per_round[a], per_round["plain"]))
            out[a].update({f"{prefix}step_ms": 1e3 * amortized(a, c), f"{prefix}ratio": amortized(a, c) / amortized("plain", c),
                           f"{prefix}ratio_q1": ratios[len(ratios) // 4], f"{prefix}ratio_q3": ratios[(3 * len(ratios)) // 4]})
            if per_step:  # median extra time of each kind of step over plain's (amortized) step
                base = amortized("plain", c)
                counts = interval_counts(a)
                out[a][f"{prefix}kinds"] = {kind: (counts.get(kind, 0), 1e3 * (statistics.median(v) - base))
                                            for kind, v in kinds(a, c).items()}
        if per_step and a == "torchhealth":  # of which inside monitor.step(), on the training thread
            out[a]["inside_kinds"] = {kind: (counts.get(kind, 0), 1e3 * statistics.median(v))
                                      for kind, v in kinds(a, len(CLOCK_PREFIXES)).items()}
    return out


def table(results: dict[str, dict[str, dict[str, float]]], device: torch.device) -> str:
    cuda = device.type == "cuda"
    processes = any("ratio_min" in r for arms in results.values() for r in arms.values())
    spread = "range over processes" if processes else "middle half of rounds"
    head = ("| model | rounds | arm | step (ms, wall-clock) | **wall-clock overhead** | " + spread + " | "
            "CPU time (ms) | CPU-time overhead | " + spread + " | "
            + ("peak working memory (MiB) | " if cuda else "") + "monitor state (KiB) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for model, arms in results.items():
        for arm, r in arms.items():
            row = f"| {model} | {r['rounds']} | {arm} (A/A control) | " if arm == "plain_again" else \
                f"| {model} | {r['rounds']} | {arm} | "
            for prefix in CLOCK_PREFIXES:
                overhead = "—" if arm == "plain" else f"{100 * (r[prefix + 'ratio'] - 1):+.1f}%"
                low, high = ((r[prefix + "ratio_min"], r[prefix + "ratio_max"]) if processes
                             else (r[prefix + "ratio_q1"], r[prefix + "ratio_q3"]))
                band = "—" if arm == "plain" else f"{100 * (low - 1):+.1f}% .. {100 * (high - 1):+.1f}%"
                row += f"{r[prefix + 'step_ms']:.2f} | {overhead} | {band} | "
            if cuda:
                row += f"{r['peak_bytes'] / 2**20:.1f} | "
            row += f"{r['state_bytes'] / 2**10:.1f} |"
            lines.append(row)
    return "\n".join(lines)


def kinds_table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """Per model, the monitor's extra time by kind of step (the issue's table): how many of a logging
    interval's steps are of that kind, the extra wall-clock and process CPU time over a plain step,
    and the wall-clock spent inside ``monitor.step()``; medians (over processes, of per-kind medians)."""
    lines = []
    for model, arms in results.items():
        th = arms.get("torchhealth", {})
        if "kinds" not in th:
            continue
        lines += [f"\n{model}: the monitor's steps by kind\n",
                  "| kind of step | steps per logging interval | extra wall-clock (ms) | extra CPU time (ms) | "
                  "inside monitor.step() (ms) |", "|---|---|---|---|---|"]
        for kind, (n, wall) in th["kinds"].items():
            cpu = th["cpu_kinds"].get(kind, (n, float("nan")))[1]
            inside = th["inside_kinds"].get(kind, (n, float("nan")))[1]
            lines.append(f"| {kind} | {n} | {wall:+.3f} | {cpu:+.3f} | {inside:.3f} |")
    return "\n".join(lines)


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
            f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}")


def main(argv: list[str] | None = None) -> int:
    # no abbreviations: --processes forwards every other option to its child processes by name
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--models", default=None, help="comma-separated subset, e.g. mlp16,conv6")
    parser.add_argument("--rounds", type=int, default=None,
                        help="measured rounds (default: 100 with per-step timing, 20 with block timing)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first")
    parser.add_argument("--block-steps", type=int, default=None,
                        help="steps per block (default: check_every with per-step timing, else log_every)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="wall-clock seconds per model after which measuring stops, at least 3 rounds "
                             "(default: 90 on CPU, none on CUDA)")
    parser.add_argument("--timing", default=None, choices=["step", "block"],
                        help="time every step (per-kind medians) or whole blocks (default: step on CPU, block "
                             "on CUDA, where timing single steps would add a synchronize per step)")
    parser.add_argument("--arms", default=None,
                        help="comma-separated subset of the arms, plain included (default: all; with --compile "
                             "all but +relu_sparsity_item)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile both models (the twin as a class of its own) before measuring")
    parser.add_argument("--processes", type=int, default=1,
                        help="repeat the measurement in this many fresh processes; report medians over them")
    parser.add_argument("--json", default=None, help="also write the raw results here (JSON)")
    parser.add_argument("--out", default=None, help="write the markdown table here")
    args = parser.parse_args(argv)
    if args.processes < 1:
        raise SystemExit("--processes must be at least 1")
    arms = tuple(args.arms.split(",")) if args.arms else tuple(a for a in ARMS if not (
        args.compile and a == "+relu_sparsity_item"))
    if "plain" not in arms or not set(arms) <= set(ARMS):
        raise SystemExit(f"--arms must include plain and name only these arms: {', '.join(ARMS)}")
    if args.compile and "+relu_sparsity_item" in arms:
        raise SystemExit("--compile: leave +relu_sparsity_item out of --arms (a compiled model does not run "
                         "hooks added after it was traced)")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    if device.type == "cpu":
        torch.set_num_threads(1)
    timing = args.timing or ("step" if device.type == "cpu" else "block")
    defaults = torchhealth.MonitorOptions()
    rounds = args.rounds or (100 if timing == "step" else 20)
    block_steps = args.block_steps or (defaults.check_every if timing == "step" else defaults.log_every)
    names = args.models.split(",") if args.models else None
    workloads_here = [] if args.processes > 1 else workloads(args.device, names)  # else measured by the children
    results = over_processes(argv if argv is not None else sys.argv[1:], args.processes) if args.processes > 1 else {}
    for w in workloads_here:
        t0 = time.perf_counter()
        budget = args.budget_s if args.budget_s is not None else (90.0 if device.type == "cpu" else float("inf"))
        per_step = timing == "step"
        results[w.name] = measure(w, device, rounds, args.warmup, block_steps, budget, per_step, arms, args.compile)
        th = results[w.name]["torchhealth"]
        print(f"{w.name}: plain {results[w.name]['plain']['step_ms']:.2f} ms/step, torchhealth "
              f"{100 * (th['ratio'] - 1):+.1f}% wall-clock, {100 * (th['cpu_ratio'] - 1):+.1f}% process CPU time "
              f"({time.perf_counter() - t0:.0f}s)", flush=True)
        for prefix, name in (("", "wall-clock"), ("cpu_", "CPU time"), ("inside_", "wall-clock inside monitor.step()")):
            kinds = "; ".join(f"{c} x{n}: {ms:+.3f} ms" for c, (n, ms) in th.get(f"{prefix}kinds", {}).items())
            if kinds:
                print(f"  extra {name} per kind of step: {kinds}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f)
    spread = (f"Measured in {args.processes} fresh processes: every figure is the median over them (the overhead "
              "is the median of the processes' overheads, not the ratio of the median steps), the range column "
              "their lowest and highest overhead." if args.processes > 1 else
              "The range column is the middle half of the per-round ratios to plain.")
    text = (f"Machine: {machine(device)}. {'Models compiled (torch.compile, default mode). ' if args.compile else ''}"
            f"Defaults: check_every={defaults.check_every}, "
            f"log_every={defaults.log_every}, sample_every={defaults.sample_every}. "
            f"Up to {rounds} interleaved rounds (column rounds) of {block_steps} steps per arm, timed by "
            "wall-clock (what the loop waits for) and by process CPU time (every thread of the process, TensorBoard's "
            "writer included). "
            + ("Step time: every step timed, count-weighted mean of the median times of each kind of step in "
               "a logging interval (log, check, after a check, before a log step, other). " if timing == "step"
               else "Step time: median block time / steps. ")
            + spread + "\n\n"
            + table(results, device) + "\n" + kinds_table(results) + "\n")
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


def over_processes(argv: list[str], processes: int) -> dict[str, dict[str, dict[str, float]]]:
    """Runs this script ``processes`` times in fresh processes; per arm, the median over them and the range."""
    forwarded, skip = [], False
    for arg in argv:  # everything but the options that say where results go and how often to repeat
        if skip:
            skip = False
        elif arg in ("--processes", "--json", "--out"):
            skip = True
        elif not arg.startswith(("--processes=", "--json=", "--out=")):
            forwarded.append(arg)
    runs = []
    with tempfile.TemporaryDirectory(prefix="torchhealth-bench-") as tmp:
        for i in range(processes):
            path = os.path.join(tmp, f"run{i}.json")
            print(f"process {i + 1} of {processes}", flush=True)
            subprocess.run([sys.executable, os.path.abspath(__file__), *forwarded, "--processes", "1", "--json", path],
                           check=True)
            with open(path) as f:
                runs.append(json.load(f))
    out: dict[str, dict[str, dict[str, float]]] = {}
    for model, arms in runs[0].items():
        out[model] = {}
        for arm, first in arms.items():
            each = [run[model][arm] for run in runs]
            out[model][arm] = {**first, "rounds": sum(r["rounds"] for r in each),
                               "peak_bytes": max(r["peak_bytes"] for r in each)}
            for prefix in CLOCK_PREFIXES:
                ratios = [r[prefix + "ratio"] for r in each]
                out[model][arm].update({
                    prefix + "step_ms": statistics.median(r[prefix + "step_ms"] for r in each),
                    prefix + "ratio": statistics.median(ratios), prefix + "ratio_min": min(ratios),
                    prefix + "ratio_max": max(ratios)})
            for prefix in (*CLOCK_PREFIXES, "inside_"):
                if prefix + "kinds" in first:  # per kind of step: the median over processes of each kind's ms
                    out[model][arm][prefix + "kinds"] = {
                        kind: (n, statistics.median(r[prefix + "kinds"][kind][1] for r in each if kind in r[prefix + "kinds"]))
                        for kind, (n, _) in first[prefix + "kinds"].items()}
    return out


if __name__ == "__main__":
    sys.exit(main())

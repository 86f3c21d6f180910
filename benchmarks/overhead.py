"""Step-time and memory overhead of torchhealth vs plain training and the usual ways of monitoring.

Arms, each on its own identical copy of the model, run interleaved in one process
(A B C D, B C D A, ... rounds), each for one logging interval of steps, so every block of
torchhealth steps holds exactly one check (and one sampled forward) at the defaults:

- ``plain``: forward, backward, optimizer step.
- ``plain_again``: the same on another copy: an A/A control, whose "overhead" is the resolution of
  the measurement on this machine (noise, and the copies' different places in memory).
- ``torchhealth``: the same plus ``Monitor(model, optimizer, log_dir=tmp)`` at its defaults.
- ``grad_norm_item``: a per-parameter ``p.grad.norm().item()`` pass every step (the pattern of
  Lightning's ``grad_norm`` + logging, or Ignite's ``GradsScalarHandler``).
- ``+relu_sparsity_item``: that plus a forward hook on every ReLU module computing
  ``(out == 0).float().mean().item()`` every step.

Reported per arm: the median over rounds of (arm block time / plain block time in the same
round), and memory. Block time is wall-clock on CUDA (after a synchronize) and, by default, the
process's CPU time on CPU (``--clock cpu``: all threads of this process, TensorBoard's writer
thread included), which other processes on a shared machine disturb far less than wall-clock. On CUDA, memory is ``torch.cuda.max_memory_allocated`` during the arm's
block minus what was allocated when the block started (working memory: activations, gradients,
the monitor's pre-check weight copy), plus the bytes of tensors the monitor keeps between steps.
On CPU only the latter is reported (the process RSS cannot be split between arms).

Usage::

    python benchmarks/overhead.py --out overhead_cpu.md                 # CPU models, 1 thread
    python benchmarks/overhead.py --device cuda --out overhead_cuda.md  # adds ResNet-50, MLP-24x1024
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
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
class Arm:
    """One way of training a copy of the model; ``block(n)`` runs n steps."""

    def __init__(self, kind: str, w: Workload, device: torch.device, log_dir: str) -> None:
        torch.manual_seed(0)
        self.kind, self.w, self.device = kind, w, device
        self.model = copy.deepcopy(w.model).to(device)
        self.x, self.y = w.inputs.to(device), w.target.to(device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9)
        self.monitor = None
        self.logged: dict[str, float] = {}
        if kind == "torchhealth":
            self.monitor = torchhealth.Monitor(self.model, self.opt, log_dir=log_dir)
        if kind == "+relu_sparsity_item":
            for name, module in self.model.named_modules():
                if isinstance(module, nn.ReLU):
                    module.register_forward_hook(self._sparsity_hook(name))

    def _sparsity_hook(self, name: str):
        def hook(module, args, out):
            self.logged[f"sparsity/{name}"] = (out == 0).float().mean().item()
        return hook

    def block(self, steps: int) -> None:
        for _ in range(steps):
            with torch.autocast(self.device.type, dtype=self.w.autocast, enabled=self.w.autocast is not None):
                loss = F.cross_entropy(self.model(self.x), self.y)
            loss.backward()
            if self.monitor is not None:
                self.monitor.step(loss)
            elif self.kind not in ("plain", "plain_again"):
                for name, p in self.model.named_parameters():
                    if p.grad is not None:
                        self.logged[f"grad_norm/{name}"] = p.grad.norm().item()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)

    def state_bytes(self) -> int:
        """Bytes of the tensors the monitor holds (0 for the other arms)."""
        if self.monitor is None:
            return 0
        return state_nbytes(list(self.monitor.collectors.values()))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# -- the measurement -----------------------------------------------------------------------------
def measure(w: Workload, device: torch.device, rounds: int, warmup: int, block_steps: int,
            clock: Callable[[], float] = time.perf_counter, budget_s: float = float("inf"),
            per_step: bool = False, arms: tuple[str, ...] = ARMS) -> dict[str, dict[str, float]]:
    """Interleaved rounds of ``block_steps`` steps per arm; returns per-arm step times and ratios.

    A round runs each arm's block in turn (A's block, B's block, ...: each model stays warm in the
    caches during its block, as in real training). With ``per_step`` every step of a block is timed
    and the result is robust to noise from other processes: steps are classed by their position in
    the logging interval (first, check, the step before a check, other), each class's time is its
    median over all rounds, and a step's amortized time is the count-weighted mean of the class
    medians. Without it (CUDA: timing single steps would need a synchronize per step) a step's
    time is the median over rounds of block time / ``block_steps``. Stops after ``rounds`` measured rounds, or earlier
    (but after at least 3) once ``budget_s`` seconds of wall-clock have passed.
    """
    started = time.perf_counter()
    check_every = torchhealth.MonitorOptions().check_every
    with tempfile.TemporaryDirectory(prefix="torchhealth-bench-") as log_dir:
        runners = [Arm(kind, w, device, log_dir) for kind in arms]
        by_position: dict[str, list[list[float]]] = {a: [[] for _ in range(block_steps)] for a in arms}
        per_round: dict[str, list[float]] = {a: [] for a in arms}
        peak: dict[str, int] = {a: 0 for a in arms}
        state: dict[str, int] = {a: 0 for a in arms}
        for r in range(warmup + rounds):
            order = runners[r % len(runners):] + runners[:r % len(runners)]
            round_times = {a: 0.0 for a in arms}
            for arm in order:
                for chunk in (range(block_steps) if per_step else [None]):
                    sync(device)
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats()
                        start_bytes = torch.cuda.memory_allocated()
                    t0 = clock()
                    arm.block(1 if per_step else block_steps)
                    sync(device)
                    elapsed = clock() - t0
                    round_times[arm.kind] += elapsed
                    if r >= warmup and per_step:
                        by_position[arm.kind][chunk].append(elapsed)
                    if r >= warmup and device.type == "cuda":
                        peak[arm.kind] = max(peak[arm.kind], torch.cuda.max_memory_allocated() - start_bytes)
            for arm in runners:
                state[arm.kind] = max(state[arm.kind], arm.state_bytes())
                if r >= warmup:
                    per_round[arm.kind].append(round_times[arm.kind] / block_steps)
            if r + 1 - warmup >= 3 and time.perf_counter() - started > budget_s:
                print(f"  {w.name}: time budget reached after {r + 1 - warmup} measured rounds", flush=True)
                break
        for arm in runners:
            if arm.monitor is not None:
                arm.monitor.close()

    def kinds(kind: str) -> tuple[dict[str, list[float]], dict[str, int]]:
        classes: dict[str, list[float]] = {}
        counts: dict[str, int] = {}
        for position, samples in enumerate(by_position[kind]):
            cls = ("first" if position == 0 else "check" if position % check_every == 0
                   else "before check" if (position + 1) % check_every == 0 else "other")
            classes.setdefault(cls, []).extend(samples)
            counts[cls] = counts.get(cls, 0) + 1
        return classes, counts

    def amortized(kind: str) -> float:
        if not per_step:
            return statistics.median(per_round[kind])
        classes, counts = kinds(kind)
        return sum(counts[c] * statistics.median(v) for c, v in classes.items()) / block_steps

    plain = per_round["plain"]
    out = {}
    for a in arms:
        ratios = sorted(t / p for t, p in zip(per_round[a], plain))
        out[a] = {"step_ms": 1e3 * amortized(a), "ratio": amortized(a) / amortized("plain"),
                  "ratio_q1": ratios[len(ratios) // 4], "ratio_q3": ratios[(3 * len(ratios)) // 4],
                  "peak_bytes": peak[a], "state_bytes": state[a], "rounds": len(per_round[a])}
        if per_step:  # median extra time of each kind of step over plain's median step
            base = amortized("plain")
            classes, counts = kinds(a)
            out[a]["kinds"] = {c: (counts[c], 1e3 * (statistics.median(v) - base)) for c, v in classes.items()}
    return out


def table(results: dict[str, dict[str, dict[str, float]]], device: torch.device) -> str:
    cuda = device.type == "cuda"
    head = "| model | rounds | arm | step (ms, median) | overhead vs plain | middle half of rounds | " + (
        "peak working memory (MiB) | " if cuda else "") + "monitor state (KiB) |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for model, arms in results.items():
        for arm, r in arms.items():
            overhead = "—" if arm == "plain" else f"{100 * (r['ratio'] - 1):+.1f}%"
            arm = f"{arm} (A/A control)" if arm == "plain_again" else arm
            spread = "—" if arm == "plain" else f"{100 * (r['ratio_q1'] - 1):+.1f}% .. {100 * (r['ratio_q3'] - 1):+.1f}%"
            row = f"| {model} | {r['rounds']} | {arm} | {r['step_ms']:.2f} | {overhead} | {spread} | "
            if cuda:
                row += f"{r['peak_bytes'] / 2**20:.1f} | "
            row += f"{r['state_bytes'] / 2**10:.1f} |"
            lines.append(row)
    return "\n".join(lines)


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
            f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--models", default=None, help="comma-separated subset, e.g. mlp16,conv6")
    parser.add_argument("--rounds", type=int, default=None, help="measured rounds (default: 10 CPU, 20 CUDA)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first")
    parser.add_argument("--block-steps", type=int, default=None,
                        help="steps per block (default: the monitor's log_every, one logging interval)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="wall-clock seconds per model after which measuring stops, at least 3 rounds "
                             "(default: 60 on CPU, none on CUDA)")
    parser.add_argument("--timing", default=None, choices=["step", "block"],
                        help="time every step (per-kind medians) or whole blocks (default: step on CPU, block "
                             "on CUDA, where timing single steps would add a synchronize per step)")
    parser.add_argument("--clock", default=None, choices=["wall", "cpu"],
                        help="what a block's time is (default: cpu on CPU, wall on CUDA)")
    parser.add_argument("--out", default=None, help="write the markdown table here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    if device.type == "cpu":
        torch.set_num_threads(1)
    rounds = args.rounds or (10 if device.type == "cpu" else 20)
    block_steps = args.block_steps or torchhealth.MonitorOptions().log_every
    clock_name = args.clock or ("cpu" if device.type == "cpu" else "wall")
    if clock_name == "cpu" and device.type == "cuda":
        raise SystemExit("--clock cpu measures host CPU time only; use --clock wall with --device cuda")
    clock = time.process_time if clock_name == "cpu" else time.perf_counter
    timing = args.timing or ("step" if device.type == "cpu" else "block")
    results = {}
    for w in workloads(args.device, args.models.split(",") if args.models else None):
        t0 = time.perf_counter()
        budget = args.budget_s if args.budget_s is not None else (60.0 if device.type == "cpu" else float("inf"))
        per_step = timing == "step"
        results[w.name] = measure(w, device, rounds, args.warmup, block_steps, clock, budget, per_step)
        th = results[w.name]["torchhealth"]
        kinds = "; ".join(f"{c} x{n}: {ms:+.2f} ms" for c, (n, ms) in th.get("kinds", {}).items())
        print(f"{w.name}: plain {results[w.name]['plain']['step_ms']:.2f} ms/step, torchhealth "
              f"{100 * (th['ratio'] - 1):+.1f}% ({time.perf_counter() - t0:.0f}s){' [' + kinds + ']' if kinds else ''}",
              flush=True)
    defaults = torchhealth.MonitorOptions()
    text = (f"Machine: {machine(device)}. Defaults: check_every={defaults.check_every}, "
            f"log_every={defaults.log_every}, sample_every={defaults.sample_every}. "
            f"Up to {rounds} interleaved rounds (column rounds) of {block_steps} steps per arm, timed by "
            f"{'process CPU time' if clock_name == 'cpu' else 'wall-clock'}. "
            + ("Step time: every step timed, count-weighted mean of the median times of each kind of step in "
               "the logging interval (first, check, before a check, other); " if timing == "step"
               else "Step time: median block time / steps; ")
            + "the last column but one is the middle half of the per-round ratios to plain.\n\n" + table(results, device) + "\n")
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

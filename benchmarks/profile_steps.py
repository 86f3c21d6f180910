"""Where the monitor's time goes, per kind of step: host time of each phase, and device time by operator.

A diagnostic for ``overhead.py``: trains one model with a Monitor at its defaults and reports,
for each kind of step (log, check, after a check, before a log step, other), the median host
time of the forward, the backward, ``monitor.step`` and the optimizer step (no synchronize
between them: host time, what a launch-bound loop pays). Then it profiles a few logging
intervals with ``torch.profiler`` and prints the operators with the most self time, host and
device.

Usage::

    python benchmarks/profile_steps.py --device cuda --models mlp24,resnet50
    python benchmarks/profile_steps.py --models mlp16 --steps 600 --profile-steps 0 --parts
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import functools
import os
import pstats
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from overhead import Bench, sync, workloads  # noqa: E402

PHASES = ("forward", "backward", "monitor.step", "optimizer")


def time_parts(monitor) -> dict[str, list[float]]:
    """Wraps the parts of a check (each collector's state, reset and finish, each detector, each
    metric sink, the filing of sampled statistics, the weight copy) with timers, in place; returns
    the lists their seconds are appended to."""
    seconds: dict[str, list[float]] = collections.defaultdict(list)

    def timed(name, fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[name].append(time.perf_counter() - t0)
        return run

    for name, collector in monitor.collectors.items():
        for method in ("state", "reset_interval", "finish"):
            setattr(collector, method, timed(f"{name}.{method}", getattr(collector, method)))
    for detector in monitor.detectors:
        detector.check = timed(f"detector {detector.kind}", detector.check)
    for sink in monitor.sinks:
        sink.write_snapshot = timed(f"sink {sink.name}", sink.write_snapshot)
    monitor.collectors["activations"].file_step = timed("activations.file_step", monitor.collectors["activations"].file_step)
    weights = monitor.collectors.get("weights")
    if weights is not None:
        weights.remember_weights = timed("weights.remember_weights", weights.remember_weights)
    monitor._start_check = timed("monitor._start_check", monitor._start_check)
    monitor._finish_check = timed("monitor._finish_check", monitor._finish_check)
    return seconds


def phases(bench: Bench, steps: int, python: cProfile.Profile | None = None) -> dict[str, dict[str, float]]:
    """Median host milliseconds of each phase, per kind of step; ``python`` profiles the checks' ``monitor.step``."""
    monitor = bench.monitor
    times: dict[str, dict[str, list[float]]] = {}
    monitor.collectors["activations"].sampling = monitor.step_count % monitor.options.sample_every == 0
    for _ in range(steps):
        kind = bench.kind_of_next_step("torchhealth")
        t0 = time.perf_counter()
        with torch.autocast(bench.device.type, dtype=bench.w.autocast, enabled=bench.w.autocast is not None):
            loss = F.cross_entropy(bench.model(bench.x), bench.y)
        t1 = time.perf_counter()
        loss.backward()
        profiling = python is not None and kind in ("check", "after check")
        if profiling:
            python.enable()
        t2 = time.perf_counter()
        monitor.step(loss)
        t3 = time.perf_counter()
        if profiling:
            python.disable()
        bench.opt.step()
        bench.opt.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        row = times.setdefault(kind, {p: [] for p in PHASES})
        for phase, seconds in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            row[phase].append(seconds)
    sync(bench.device)
    return {kind: {p: 1e3 * statistics.median(v) for p, v in row.items()} for kind, row in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--models", default="mlp16")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--profile-steps", type=int, default=100)
    parser.add_argument("--python-profile", action="store_true",
                        help="also list the Python functions with the most own time in the checks' monitor.step")
    parser.add_argument("--parts", action="store_true",
                        help="also time each part of a check in place (collectors, detectors, sinks), alternating "
                             "blocks of check_every steps with the twin as overhead.py does")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    for w in workloads(args.device, args.models.split(",")):
        with tempfile.TemporaryDirectory(prefix="torchhealth-profile-") as log_dir:
            bench = Bench(w, device, log_dir)
            bench.block("plain", 20)  # warm-up
            phases(bench, 20)
            print(f"## {w.name}: median host ms per phase, by kind of step ({args.steps} steps)")
            print("| kind | " + " | ".join(PHASES) + " |\n|---|" + "---|" * len(PHASES))
            for kind, row in sorted(phases(bench, args.steps).items()):
                print(f"| {kind} | " + " | ".join(f"{row[p]:.3f}" for p in PHASES) + " |")
            if args.python_profile:
                python = cProfile.Profile()
                phases(bench, args.steps, python)
                print(f"\n### Python functions by own time in monitor.step of check and after-check steps "
                      f"({args.steps} steps, under cProfile)\n")
                pstats.Stats(python, stream=sys.stdout).sort_stats("tottime").print_stats(30)
            if args.parts:
                seconds = time_parts(bench.monitor)
                for _ in range(max(1, args.steps // bench.monitor.options.check_every)):
                    bench.block("plain", bench.monitor.options.check_every)
                    bench.block("torchhealth", bench.monitor.options.check_every)
                print(f"\n### Parts of a check, timed in place (median ms over the calls)\n")
                print("| part | calls | median ms |\n|---|---|---|")
                for part, values in sorted(seconds.items()):
                    print(f"| {part} | {len(values)} | {1e3 * statistics.median(values):.3f} |")
            if bench.monitor.guard.disabled:
                print(f"parts of the monitor failed: {', '.join(sorted(bench.monitor.guard.disabled))}")
            if args.profile_steps:
                activities = [torch.profiler.ProfilerActivity.CPU] + (
                    [torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
                with torch.profiler.profile(activities=activities) as prof:
                    phases(bench, args.profile_steps)
                for key in ("self_cpu_time_total",) + (("self_device_time_total",) if device.type == "cuda" else ()):
                    print(f"\n### top operators by {key} over {args.profile_steps} monitored steps\n")
                    print(prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=60))
            bench.monitor.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

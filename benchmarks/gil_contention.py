"""Does host work on another thread leave an eager training step alone? What the GIL allows here.

Moving the host side of checks (reading the copied statistics, the snapshot, detectors,
TensorBoard) onto a background thread only pays if the training thread does not wait for it.
This measures that directly, without torchhealth: the 16-layer MLP of ``overhead.py`` trains,
and at chosen steps a job of known length runs on a second thread, started where a worker would
start it. The job is either Python (it holds the GIL, as detectors and sinks do) or GIL-free (a
SHA-256 of a buffer, calibrated to the same length alone): the difference between the two is
what the GIL costs, the GIL-free arm shows whether a free core exists at all.

Job start points:

- ``backward``: from a post-accumulate-grad hook on the first parameter backward reaches, the
  longest stretch in which the training thread runs C++ (the autograd engine releases the GIL);
- ``step end``: when the step ends, beside the next step's forward and backward (a worker woken
  at the check).

Every step is timed by wall-clock from the start of its forward to the end of its optimizer step;
the job is waited for after that, outside the timed span. Arms alternate step by step.

Usage::

    python benchmarks/gil_contention.py --job-ms 1.0 --steps 400
    python benchmarks/gil_contention.py --switch-interval 0.0001   # hand the GIL over every 0.1 ms
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import threading
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from overhead import workloads  # noqa: E402

ARMS = ("alone", "python job at backward", "GIL-free job at backward", "python job at step end",
        "GIL-free job at step end")


class Job:
    """A job of about ``ms`` milliseconds on its own thread, Python or GIL-free, run each time it is started."""

    def __init__(self, ms: float) -> None:
        self.python_loops = self._calibrate(lambda n: sum(range(n)), ms)
        sample = b"x" * (1 << 16)  # hashed whole, without the GIL: the job hashes ``buffer``, a run of samples
        self.buffer = sample * self._calibrate(lambda n: [hashlib.sha256(sample).digest() for _ in range(n)], ms, 1)
        self.kind = "python"
        self._start, self._done = threading.Event(), threading.Event()
        self._done.set()
        threading.Thread(target=self._run, daemon=True).start()

    @staticmethod
    def _calibrate(work, ms: float, n: int = 1000) -> int:
        """How many units of ``work`` (``work(n)`` does n) take about ``ms`` milliseconds."""
        while True:
            t0 = time.perf_counter()
            work(n)
            seconds = time.perf_counter() - t0
            if seconds > 0.2e-3:
                return max(1, int(n * ms * 1e-3 / seconds))
            n *= 4

    def _run(self) -> None:
        while True:
            self._start.wait()
            self._start.clear()
            if self.kind == "python":
                sum(range(self.python_loops))
            else:
                hashlib.sha256(self.buffer).digest()
            self._done.set()

    def start(self) -> None:
        self._done.clear()
        self._start.set()

    def wait(self) -> None:
        self._done.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job-ms", type=float, default=1.0, help="length of the job alone (default 1.0 ms)")
    parser.add_argument("--steps", type=int, default=400, help="measured steps per arm")
    parser.add_argument("--switch-interval", type=float, default=None,
                        help="the interpreter's switch interval in seconds for the run (default: left at %s)"
                             % sys.getswitchinterval())
    args = parser.parse_args(argv)
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    w = workloads("cpu", ["mlp16"])[0]
    model, x, y = w.model, w.inputs, w.target
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    job = Job(args.job_ms)
    at_backward = [False]
    first_in_backward = list(model.parameters())[-1]
    first_in_backward.register_post_accumulate_grad_hook(lambda p: job.start() if at_backward[0] else None)
    times: dict[str, list[float]] = {a: [] for a in ARMS}

    def train_step() -> float:
        """One training step; returns when it started."""
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return t0
    for i in range(args.steps * len(ARMS) + 50):
        arm = ARMS[i % len(ARMS)]
        job.kind = "python" if arm.startswith("python") else "gil-free"
        at_backward[0] = arm.endswith("at backward")
        t0 = train_step()
        t1 = time.perf_counter()
        at_backward[0] = False
        job.wait()
        if arm.endswith("at step end"):  # starts now, beside the next arm's step: charge that step to this arm
            job.start()
            t0 = train_step()
            t1 = time.perf_counter()
            job.wait()
        if i >= 50:
            times[arm].append(t1 - t0)
    alone = statistics.median(times["alone"])
    print(f"MLP 16x256, batch 64, 1 torch thread, {os.cpu_count()} CPUs visible; a job of {args.job_ms:.2f} ms "
          f"alone; switch interval {1e3 * sys.getswitchinterval():g} ms; medians over {args.steps} steps per arm, "
          "arms alternating step by step\n")
    print("| arm | step (ms, wall-clock) | extra (ms) | extra / job length |")
    print("|---|---|---|---|")
    for arm in ARMS:
        step = statistics.median(times[arm])
        extra = step - alone
        share = "—" if arm == "alone" else f"{extra / (args.job_ms * 1e-3):.0%}"
        print(f"| {arm} | {1e3 * step:.2f} | {'—' if arm == 'alone' else f'{1e3 * extra:+.2f}'} | {share} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

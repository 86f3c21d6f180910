"""Proves on a GPU that the monitor never makes the host wait for the device mid-step.

Every step of a training loop with a Monitor at its defaults runs under
``torch.cuda.set_sync_debug_mode("error")``: any synchronizing CUDA call (``.item()``,
``.tolist()`` of a device tensor, a blocking copy...) raises. Check steps included: a check copies
its statistics to pinned memory without waiting and the next step reads them after a CUDA event,
so the only wait left is that event's, counted here (one per check, at the step after it, and
usually already complete). A plain step runs under ``"error"`` first, to show the loop itself is
clean. With ``--device cpu`` the same loop runs as a dry run (sync debug mode exists only for CUDA).

Usage::

    python benchmarks/no_sync_check.py --device cuda --out no_sync.md
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import traceback
import warnings

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from overhead import Workload, workloads  # noqa: E402

import torchhealth  # noqa: E402  (overhead put the repository root on sys.path)


@contextlib.contextmanager
def sync_debug(device: torch.device, mode: str):
    """Sets the CUDA sync debug mode for the block; yields the list of recorded sync warnings."""
    caught: list[str] = []
    if device.type != "cuda":
        yield caught
        return
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode(mode)
        try:
            yield caught
        finally:
            torch.cuda.set_sync_debug_mode("default")
    caught.extend(str(r.message).splitlines()[0] for r in records if "synchroniz" in str(r.message).lower())


def check(w: Workload, device: torch.device, steps: int) -> dict[str, object]:
    """Trains ``w`` with a monitor; returns what happened on unchecked and check steps."""
    torch.manual_seed(0)
    model = w.model.to(device)
    x, y = w.inputs.to(device), w.target.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step(monitor=None) -> None:
        with torch.autocast(device.type, dtype=w.autocast, enabled=w.autocast is not None):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        if monitor is not None:
            monitor.step(loss)
        opt.step()
        opt.zero_grad(set_to_none=True)

    result: dict[str, object] = {"model": w.name}
    step()  # warm-up: lazy initialisation (cuBLAS handles, optimizer state) may synchronize once
    try:
        with sync_debug(device, "error"):
            step()
        result["plain_step"] = "no sync"
    except RuntimeError as exc:
        result["plain_step"] = f"SYNCS ({str(exc).splitlines()[0]}): the loop itself is not sync-free"
    waits: list[tuple[int, bool]] = []  # (step, whether the event had completed before the wait)
    if device.type == "cuda":
        original = torch.cuda.Event.synchronize

        def counted(event):
            waits.append((current_step, event.query()))
            return original(event)

        torch.cuda.Event.synchronize = counted
    with tempfile.TemporaryDirectory(prefix="torchhealth-nosync-") as log_dir:
        monitor = torchhealth.Monitor(model, opt, log_dir=log_dir, strict=True)  # strict: errors reach us
        every = monitor.options.check_every
        checks, failed = [], []
        for current_step in range(steps):
            if monitor.step_count % every == 0:
                checks.append(current_step)
            try:
                with sync_debug(device, "error"):
                    step(monitor)
            except RuntimeError as exc:
                failed.append(f"step {current_step}: {str(exc).splitlines()[0]}")
                traceback.print_exc()
        monitor.close()
    if device.type == "cuda":
        torch.cuda.Event.synchronize = original
    result.update(steps_without_sync=steps - len(failed), steps_with_sync=failed, check_steps=checks,
                  event_waits_at_steps=[s for s, _ in waits],
                  event_waits_already_complete=sum(done for _, done in waits),
                  snapshot_families=sorted(monitor.last_snapshot.stats))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    parser.add_argument("--models", default=None, help="comma-separated (default: resnet50,mlp24 on CUDA, mlp16,conv6 on CPU)")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--out", default=None, help="write a markdown summary here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    names = args.models.split(",") if args.models else (["resnet50", "mlp24"] if device.type == "cuda" else ["mlp16", "conv6"])
    lines = [f"# No-sync check on {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU (dry run: sync debug mode is CUDA-only)'}",
             "", f"torch {torch.__version__}; {args.steps} monitored steps per model, Monitor defaults.", ""]
    failed = False
    for w in workloads(args.device, names):
        try:
            r = check(w, device, args.steps)
        except Exception as exc:  # report and go on to the next model
            traceback.print_exc()
            r = {"model": w.name, "error": f"{type(exc).__name__}: {exc}"}
        # one event wait per check, at the step after it (the last one at close(), after the loop)
        expected_waits = [c + 1 for c in r.get("check_steps", []) if c + 1 < args.steps]
        ok = not r.get("error") and not r.get("steps_with_sync") and (
            device.type != "cuda" or r.get("event_waits_at_steps", [])[:len(expected_waits)] == expected_waits)
        failed |= not ok
        lines.append(f"## {r['model']}: {'PASS' if ok else 'FAIL'}")
        lines += [f"- {key}: {value}" for key, value in r.items() if key != "model"] + [""]
        print("\n".join(lines[-len(r) - 1:]), flush=True)
    text = "\n".join(lines)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print("NO-SYNC CHECK:", "FAIL" if failed else "PASS", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""A rule and a sink of your own: a loss target the run must meet, and alerts written to a CSV file.

One new detector and one new sink, registered through the public API next to the defaults (the
TensorBoard dashboard and ``alerts.jsonl`` stay); no file of torchhealth is touched.

    python examples/custom_detector.py [--logdir runs/custom_detector] [--steps 300]
"""

from __future__ import annotations

import argparse
import csv
import os

import torch
import torch.nn.functional as F
from torch import nn

import torchhealth


class MissedLossTarget(torchhealth.Detector):
    """Critical when the training loss is still above ``target`` at or after step ``by_step``.

    Args:
        target: The loss the run should have reached.
        by_step: The step by which it should have reached it.
    """

    kind = "missed_loss_target"

    def __init__(self, target: float, by_step: int) -> None:
        super().__init__()
        if not target > 0 or not isinstance(by_step, int) or by_step < 0:
            raise ValueError(f"MissedLossTarget needs target > 0 and by_step >= 0, got {target!r}, {by_step!r}")
        self.target, self.by_step = target, by_step

    def check(self, snapshot, facts):
        if snapshot.loss is None or snapshot.step < self.by_step:
            return []
        if snapshot.loss <= self.target:
            self.episodes.healthy("model", snapshot.step)
            return []
        return self.episode("model", facts, step=snapshot.step, severity="critical", layer=None, value=snapshot.loss,
                            evidence={"target": self.target, "by_step": self.by_step},
                            message=f"training loss {snapshot.loss:.3g} is above the target {self.target:g} "
                                    f"at step {snapshot.step} (due by step {self.by_step})")

    def advise(self, facts, evidence):
        lr = facts.optimizer.param_groups[0]["lr"] if facts.optimizer is not None else None
        raise_lr = f"Raise the learning rate from {lr:g}" if lr is not None else "Raise the learning rate"
        return [f"{raise_lr}: the loss falls, but too slowly to meet the target in time.",
                "Train for more steps, or set a target that fits this budget."]


class CsvAlertSink(torchhealth.Sink):
    """Appends every alert as a row of ``<log_dir>/alerts.csv`` (on rank 0 only, like the monitor's own files)."""

    name = "csv"

    def attach(self, context: torchhealth.SinkContext) -> bool:
        if context.log_dir is None or context.rank != 0:
            return False
        self.path = os.path.join(context.log_dir, "alerts.csv")
        self._file = None
        return True

    def write_alerts(self, alerts) -> None:
        if self._file is None:
            new = not os.path.exists(self.path)
            self._file = open(self.path, "a", newline="", encoding="utf-8")
            self._writer = csv.writer(self._file)
            if new:
                self._writer.writerow(["step", "severity", "kind", "layer", "message"])
        for alert in alerts:
            self._writer.writerow([alert.step, alert.severity, alert.kind, alert.layer or "", alert.message])
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def spirals(batch: int, seed: int = 0):
    """Endless batches of two interleaved spirals (a task a small MLP learns slowly at a low learning rate)."""
    g = torch.Generator().manual_seed(seed)
    while True:
        label = torch.randint(0, 2, (batch,), generator=g)
        t = 3 * torch.rand(batch, generator=g) + 0.5
        angle = t * 2.5 + label * torch.pi
        x = torch.stack([t * torch.cos(angle), t * torch.sin(angle)], dim=1) + 0.1 * torch.randn(batch, 2, generator=g)
        yield x, label


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="runs/custom_detector")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.005)  # too low to reach the target in time
    monitor = torchhealth.Monitor(
        model, optimizer, log_dir=args.logdir,
        detectors=[*torchhealth.default_detectors(), MissedLossTarget(target=0.3, by_step=args.steps // 2)],
        sinks=[*torchhealth.default_sinks(), CsvAlertSink()],
        on_alert=lambda alert: print(alert))
    with monitor:
        for _, (x, y) in zip(range(args.steps), spirals(batch=32)):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            monitor.step(loss)
            optimizer.step()
            optimizer.zero_grad()
    print(f"alerts as CSV: {os.path.join(args.logdir, 'alerts.csv')}")
    print(f"tensorboard --logdir {args.logdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

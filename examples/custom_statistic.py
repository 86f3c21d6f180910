"""A statistic of your own: per-layer gradient signal-to-noise, logged to TensorBoard and used by a rule.

One new collector and one new detector, registered through the public API; no file of torchhealth is
touched. The collector's values reach the snapshot, TensorBoard (``health/gradient_snr/<layer>``),
``torchhealth report`` and, under torch.distributed, the monitor's one reduction across ranks.

    python examples/custom_statistic.py [--logdir runs/custom_statistic] [--steps 400]
    tensorboard --logdir runs/custom_statistic     # the Scalars tab, health/gradient_snr
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import torchhealth
from torchhealth.collectors import file_values


class GradientSNR(torchhealth.Collector):
    """Per-layer gradient signal-to-noise ratio over each check interval.

    With g_t a layer's gradient at step t of the interval (k steps): signal = ||mean g||^2, noise =
    mean ||g_t - mean g||^2, SNR = signal / noise. Below about 1 the steps mostly cancel out: the
    batch is too small (or the learning rate too high) for what is left to learn. Kept on the device:
    the interval's gradient sum (one parameter-sized buffer) and each parameter's summed squared norm.
    """

    name = "gradient_snr"

    def attach(self, context: torchhealth.AttachContext) -> bool:
        self.params = [p for _, _, p in context.params]
        self.layers = list(dict.fromkeys(layer for _, layer, _ in context.params))
        self.index = np.array([self.layers.index(layer) for _, layer, _ in context.params])
        self.sums = [torch.zeros_like(p) for p in self.params]
        self.squares = torch.zeros(len(self.params), device=context.device)
        self.steps = 0
        return bool(self.params)

    def idle_steps(self, step: int) -> int:
        return 0  # it needs every step's gradients: no step takes the quiet path

    def on_step(self, loss, offset: int) -> bool:
        grads = [p.grad for p in self.params]
        if any(g is None for g in grads):
            return False
        with torch.no_grad():
            torch._foreach_add_(self.sums, grads)
            self.squares += torch.stack(torch._foreach_norm(grads)).square()
        self.steps += 1
        return False

    def state(self):
        # the gradients are the same on every rank under DDP, so the ranks' values are averaged
        signal = torch.stack(torch._foreach_norm(self.sums)).square()
        return {"signal": (signal, "mean"), "squares": (self.squares, "mean"),
                "steps": (np.array([self.steps], dtype=np.float32), "mean")}

    def reset_interval(self) -> None:
        torch._foreach_zero_(self.sums)
        self.squares.zero_()
        self.steps = 0

    def finish(self, state, snapshot, interval_start: int) -> None:
        k = float(state["steps"][0])
        if k < 2:
            return
        per_layer = lambda values: np.bincount(self.index, weights=values, minlength=len(self.layers))  # noqa: E731
        signal = per_layer(state["signal"].astype(np.float64)) / k ** 2
        power = per_layer(state["squares"].astype(np.float64)) / k
        noise = np.maximum(power - signal, 1e-30)
        file_values(snapshot, "gradient_snr", self.layers, signal / noise)


class NoisyGradients(torchhealth.Detector):
    """Warns when a layer's gradient SNR stays below ``threshold`` for ``checks`` checks in a row.

    Args:
        threshold: SNR below which a check counts as noisy.
        checks: Noisy checks in a row before the warning.
    """

    kind = "noisy_gradients"

    def __init__(self, threshold: float = 0.2, checks: int = 5) -> None:
        super().__init__()
        if not threshold > 0 or not isinstance(checks, int) or checks < 1:
            raise ValueError(f"NoisyGradients needs threshold > 0 and checks >= 1, got {threshold!r}, {checks!r}")
        self.threshold, self.checks = threshold, checks

    def check(self, snapshot, facts):
        alerts = []
        for layer, snr in snapshot.family("gradient_snr").items():
            recent = self.remember(f"snr:{layer}", snr)[-self.checks:]
            if len(recent) == self.checks and max(recent) < self.threshold:
                alerts += self.episode(layer, facts, step=snapshot.step, severity="warning", layer=layer, value=snr,
                                       evidence={"snr": recent},
                                       message=f"gradient signal-to-noise of `{layer}` stayed below "
                                               f"{self.threshold:g} for {self.checks} checks (now {snr:.3g})")
            elif snr > 2 * self.threshold:
                self.episodes.healthy(layer, snapshot.step)
        return alerts

    def advise(self, facts, evidence):
        return ["Raise the batch size (or accumulate gradients over more steps): most of each step's gradient "
                "is noise that the next step cancels.",
                "Lower the learning rate, or decay it: near a minimum a smaller step averages the noise out."]


def noisy_regression(batch: int, seed: int = 0):
    """Endless batches of a linear target with heavy label noise: once the signal is learned, what
    remains of each small batch's gradient is noise."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(16, 1, generator=g)
    while True:
        x = torch.randn(batch, 16, generator=g)
        yield x, x @ w + 1.0 * torch.randn(batch, 1, generator=g)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="runs/custom_statistic")
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = torchhealth.Monitor(
        model, optimizer, log_dir=args.logdir, log_every=10,
        collectors=[*torchhealth.default_collectors(), GradientSNR()],
        detectors=[*torchhealth.default_detectors(), NoisyGradients()],
        on_alert=lambda alert: print(alert))
    with monitor:
        for _, (x, y) in zip(range(args.steps), noisy_regression(batch=8)):
            loss = F.mse_loss(model(x), y)
            loss.backward()
            monitor.step(loss)
            optimizer.step()
            optimizer.zero_grad()
    snr = monitor.last_snapshot.family("gradient_snr")
    print("last gradient SNR per layer:", {layer: round(value, 3) for layer, value in snr.items()})
    print(f"tensorboard --logdir {args.logdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Quick start: watch two small networks train on scikit-learn's digits.

One trains well; the other uses a learning rate far too high. torchhealth watches both with the
two-line integration, writes a TensorBoard run for each and prints what it found.

    python examples/quickstart.py [--logdir runs/quickstart] [--steps 300]
    tensorboard --logdir runs/quickstart     # then open the "Custom Scalars" tab
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

import torchhealth


def digits_batches(batch_size: int, seed: int):
    """Endless shuffled mini-batches of the 8x8 digits (1797 images, 10 classes)."""
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    g = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - batch_size + 1, batch_size):
            idx = order[i:i + batch_size]
            yield x[idx], y[idx]


def make_model() -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(inplace=True),
        nn.Linear(128, 128), nn.ReLU(inplace=True),
        nn.Linear(128, 64), nn.ReLU(inplace=True),
        nn.Linear(64, 10),
    )


def train(name: str, lr: float, steps: int, logdir: str) -> torchhealth.Monitor:
    torch.manual_seed(0)
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    monitor = torchhealth.Monitor(model, optimizer=opt, log_dir=os.path.join(logdir, name))  # line 1
    batches = digits_batches(64, seed=0)
    for _ in range(steps):
        x, y = next(batches)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        monitor.step(loss)  # line 2: after backward, before zero_grad
        opt.step()
        opt.zero_grad()
    monitor.close()
    return monitor


def report(name: str, monitor: torchhealth.Monitor) -> None:
    snap = monitor.last_snapshot
    print(f"\n== {name}: {monitor.step_count} steps, final loss "
          f"{snap.loss if snap.loss is not None else 'non-finite'}")
    grads = snap.family("grad_norm")
    for layer, value in grads.items():
        print(f"   grad_norm[{layer}] = {value:.3g}")
    if not monitor.alerts:
        print("   no problems found")
    for alert in monitor.alerts:
        print("  ", str(alert).replace("\n", "\n   "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="runs/quickstart")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name, lr in (("healthy", 0.05), ("lr_too_high", 3.0)):
        report(name, train(name, lr, args.steps, args.logdir))
    print(f"\nTensorBoard: tensorboard --logdir {args.logdir}  (open the Custom Scalars tab)")


if __name__ == "__main__":
    main()

"""Evidence that each faulty scenario really shows its fault, from raw statistics and WITHOUT a Monitor.

A detection benchmark is only as good as its labels: a scenario labelled "exploding_gradient" whose
gradients never grew measures nothing. This script trains each scenario with a plain loop (no
torchhealth hooks, no detectors) and prints the statistic its label is about, computed directly:

- every run: the loss's first and last finite value, the first non-finite step, and the total gradient
  norm at step 0 with its finite peak (exploding_gradient).
- loss_divergence: the loss's peak (finite) over its first value, and its final value.
- vanishing_gradient: gradient norm of the lowest third of weight layers over the highest third
  (geometric means), median over the second half of the run, and the loss change.
- dead_units: per activation layer, the share of units that were never positive on 16 batches at the end.
- saturated_activation: per hidden tanh/sigmoid layer, the share of outputs at the extremes, averaged.
- nonfinite: the first step whose loss is NaN/Inf.
- loss_plateau: relative loss change between the first and last 10 steps.
- overfitting: validation loss at its best, and at the end, with the training loss at both.

    python benchmarks/fault_evidence.py [--group heldout2] [--only NAME ...] [--seed 0] [--out FILE]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tree this file is in

import torchhealth_scenarios as sc

EXTREME = 0.97


def _activation_outputs(model: nn.Module, batch: tuple) -> dict[str, tuple[str, torch.Tensor]]:
    """Hidden activation outputs of one forward pass: {layer: (kind, output)} (modules and FunctionalMLP)."""
    outputs, hooks = {}, []
    kinds = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid"}
    for name, module in model.named_modules():
        if type(module) in kinds:
            hooks.append(module.register_forward_hook(
                lambda m, i, o, name=name: outputs.__setitem__(name, (kinds[type(m)], o.detach().clone()))))
    if isinstance(model, sc.FunctionalMLP):
        kind = {torch.tanh: "tanh", torch.sigmoid: "sigmoid"}.get(model.activation, "relu")
        for i, layer in enumerate(model.layers[:-1]):
            hooks.append(layer.register_forward_hook(
                lambda m, inp, o, i=i: outputs.__setitem__(f"layers.{i}", (kind, model.activation(o.detach())))))
    try:
        with torch.no_grad():
            model(batch[0])
    finally:
        for h in hooks:
            h.remove()
    return outputs


def _weight_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and m.weight.grad is not None]


def evidence(scenario: sc.Scenario, seed: int = 0) -> str:
    """Trains ``scenario`` without a Monitor and describes the raw statistic of its expected kind."""
    torch.manual_seed(seed)
    run = scenario.build(seed)
    losses, norms, ratios, saturation, vals = [], [], [], {}, []
    first_nonfinite = None
    for step in range(scenario.steps):
        run.model.train()
        batch = next(run.batches)
        loss = run.loss_fn(run.model, batch)
        loss.backward()
        value = float(loss.detach())
        losses.append(value)
        grads = [p.grad for p in run.model.parameters() if p.grad is not None]
        norms.append(float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads))))
        layers = [float(m.weight.grad.norm()) for m in _weight_layers(run.model)]
        if len(layers) >= 3:
            third = len(layers) // 3
            low, high = layers[:third], layers[-third:]
            if all(v > 0 and math.isfinite(v) for v in low + high):
                ratios.append(math.exp(statistics.mean(map(math.log, low)) - statistics.mean(map(math.log, high))))
        if run.validate is not None and step % run.val_every == 0:
            run.model.eval()
            with torch.no_grad():
                vals.append((step, run.validate(run.model), value))
        if step % 10 == 0:
            for name, (kind, out) in _activation_outputs(run.model, batch).items():
                if kind != "relu":
                    share = (out.abs() > EXTREME) if kind == "tanh" else ((out < 1 - EXTREME) | (out > EXTREME))
                    saturation.setdefault(name, []).append(float(share.float().mean()))
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        if not math.isfinite(value):
            first_nonfinite = step
            break
    finite = [v for v in losses if math.isfinite(v)] or [math.nan]
    parts = [f"steps {len(losses)}, loss {finite[0]:.3g} -> {finite[-1]:.3g}",
             f"first non-finite step {first_nonfinite}"]
    peak = max((n for n in norms if math.isfinite(n)), default=math.nan)
    parts.append(f"grad norm: step 0 {norms[0]:.3g}, finite peak {peak:.3g} ({peak / norms[0]:.3g}x) at step "
                 f"{norms.index(peak) if math.isfinite(peak) else '-'}")
    expected = set(scenario.expected)
    if "loss_divergence" in expected:
        parts.append(f"loss peak {max(finite):.3g} = {max(finite) / finite[0]:.3g}x the first loss")
    if "vanishing_gradient" in expected and ratios:
        parts.append(f"lower/upper grad norm ratio, median of 2nd half {statistics.median(ratios[len(ratios) // 2:]):.2g}")
    if "dead_units" in expected:
        tail = [_activation_outputs(run.model, next(run.batches)) for _ in range(16)]
        for name, (kind, _) in tail[0].items():
            if kind == "relu":
                fired = torch.stack([(out > 0).transpose(0, 1).reshape(out.shape[1], -1).any(1)
                                     for _, out in (t[name] for t in tail)]).any(0)
                parts.append(f"{name}: {1 - float(fired.float().mean()):.0%} of {fired.numel()} units never fired "
                             "on 16 batches")
    if "saturated_activation" in expected:
        parts += [f"{name}: mean saturated share {statistics.mean(v):.0%} (min {min(v):.0%})"
                  for name, v in saturation.items()]
    if "loss_plateau" in expected:
        a, b = statistics.mean(finite[:10]), statistics.mean(finite[-10:])
        parts.append(f"loss change first-10 -> last-10 steps {(b - a) / a:+.2%}")
    if "overfitting" in expected and vals:
        best = min(vals, key=lambda v: v[1])
        parts.append(f"val loss best {best[1]:.3g} at step {best[0]} (train {best[2]:.3g}); final {vals[-1][1]:.3g} "
                     f"at step {vals[-1][0]} (train {vals[-1][2]:.3g})")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", default=None, help="only this group (development, heldout, heldout2)")
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--out", help="also write the list to this markdown file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    lines = []
    for name, scenario in sc.SCENARIOS.items():
        if not scenario.expected or (args.only and name not in args.only):
            continue
        if args.group and scenario.group != args.group:
            continue
        lines.append(f"- `{name}` [{scenario.group}] ({', '.join(scenario.expected)}): {evidence(scenario, args.seed)}")
        print(lines[-1], flush=True)
    if args.out:
        Path(args.out).write_text("# Fault evidence: raw statistics of every faulty scenario, without a Monitor\n\n"
                                  "Regenerate with `python benchmarks/fault_evidence.py --out docs/fault_evidence.md` "
                                  f"(seed {args.seed}).\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

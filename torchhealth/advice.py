"""Advice: ranked fixes for an alert, specific to the model and optimizer the monitor sees.

Every suggestion states what to change and why, and the catalogue never proposes adding what the
model already has (normalization, dropout, LeakyReLU, weight decay...). Inputs are the alert's kind,
its evidence (numbers the detector measured) and the model facts; the output is a list of strings,
most promising first.

Evidence keys read here (the contract between the detectors and this catalogue; a detector of your own
that fills them gets the same fixes; ``tests/test_detector_arguments.py`` checks that every key read
below is listed):

- ``layers``: the layers the problem is in, in forward order (``dead_units``, ``saturated_activation``,
  ``vanishing_gradient`` (its lower third), ``exploding_gradient`` (the fastest-growing layer),
  ``suspicious_dropout`` and ``final_activation``; the diagnosis widens it to every grouped layer).
  Picks the parameter group whose learning rate, weight decay, momentum or eps a fix names, the
  layers to add normalization after, the ReLUs to make leaky, the module to fix.
- ``healthy_norm``: a total gradient norm seen before the trouble (``exploding_gradient``,
  ``gradient_spike``: the reference scale); ``clip`` suggests ``max_norm`` at twice it.
- ``update_ratio``: the median update/weight ratio per step at the latest log step (``dead_units``,
  ``loss_plateau``); large updates make the learning rate the fix, tiny ones call for a larger rate.
- ``preceding_bias_mean``: the mean bias of the weight layer feeding a dead ReLU site
  (``dead_units``, with ``feeding_layer`` naming that layer); a negative mean calls for zero biases.
- ``root``: where NaN/Inf appeared first, ``"loss"``, ``"activation:<layer>"`` or ``"grad:<layer>"``
  (``nonfinite``); the fix inspects that place.
- ``best_val_step``: the step of the lowest validation loss (``overfitting``); early stopping keeps it.
- ``spike_step``: the last step of the check interval where a spike appeared (``gradient_spike``,
  ``loss_spike``; also ``exploding_gradient``/``loss_divergence`` grown from a spike); the batches to inspect.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from torchhealth.formatting import fmt
from torchhealth.facts import ModelFacts

SATURATING = ("sigmoid", "tanh")
DEEP_STACK = 6
"""Weight layers from which a plain stack counts as deep (residual connections, ReLU advice)."""
NEGATIVE_BIAS = 0.1
"""Mean bias below minus this keeps ReLU pre-activations negative; PyTorch's default init gives means within
about +-0.02 (uniform in +-1/sqrt(fan_in), averaged over the layer's units)."""
HEAVY_DECAY = 1e-3
"""Weight decay whose per-step shrink ``lr * weight_decay`` reaches this halves every weight within 700 steps;
common settings shrink 20-100x slower (SGD 0.1 x 5e-4, AdamW 1e-3 x 0.01)."""
LARGE_UPDATES = 1e-2
"""Update/weight ratio per step above which updates are large (about 1e-3 is healthy, CS231n)."""
LARGE_EPS = 1e-4
"""Adam's eps at or above this (default 1e-8) is larger than typical gradient second moments' square roots."""
INIT_GAIN_RANGE = (0.1, 5.0)
"""``std(W) * sqrt(fan_in)`` outside this range is an init scale far from any standard scheme."""
RECURRENT = ("RNN", "LSTM", "GRU")
LEAKY = ("LeakyReLU", "ELU", "PReLU", "SELU", "GELU", "SiLU", "CELU", "Mish")


class Fix(str):
    """A suggestion's text, plus which setting it turns which way (so fixes across a run can agree).

    Attributes:
        knob: The setting changed, with its current value where that matters, e.g.
            ``"learning_rate@0.05"`` or ``"normalization"``; None when the fix turns no shared knob.
        direction: ``"lower"``, ``"raise"``, ``"add"`` or ``"remove"``; two fixes of one knob with
            different directions contradict each other.
    """

    knob: str | None
    direction: str | None

    def __new__(cls, text: str, knob: str | None = None, direction: str | None = None) -> "Fix":
        fix = super().__new__(cls, text)
        fix.knob, fix.direction = knob, direction
        return fix

    def __reduce__(self) -> tuple:
        return Fix, (str(self), self.knob, self.direction)


def suggest(kind: str, facts: ModelFacts, evidence: dict[str, Any] | None = None) -> list[str]:
    """Ranked suggestions for one alert.

    Args:
        kind: The alert kind (``"exploding_gradient"``...).
        facts: What the monitor knows about the model and optimizer.
        evidence: The detector's numbers; the keys read are listed in this module's docstring.

    Returns:
        Suggestions, most promising first; empty for unknown kinds.
    """
    rules = CATALOGUE.get(kind, ())
    out: list[str] = []
    for rule in rules:
        text = rule(facts, evidence or {})
        if text and text not in out:
            out.append(text)
    return out


# -- the individual fixes: each returns None when it does not apply to this model ------------------
def lower_lr(factor: float, why: str) -> Callable[[ModelFacts, dict], str | None]:
    """A rule: lower the learning rate by ``factor`` (a concrete value when known), in the alert's parameter group.

    Under an LR scheduler (its ``initial_lr`` is in the group) the value to lower is the schedule's base.
    """
    def rule(facts: ModelFacts, evidence: dict) -> str | None:
        found = facts.group(evidence.get("layers"))
        if found is None:
            return Fix(f"Lower the learning rate about {factor:g}x: {why}.", "learning_rate", "lower")
        index, group = found
        lr, base = group.get("lr"), group.get("initial_lr")
        if not lr:
            return None
        where = _group_label(index, facts)
        if base and not math.isclose(base, lr):
            return Fix(f"Lower the scheduler's base learning rate{where} from {base:g} to {_round(base / factor):g} "
                       f"(now {fmt(lr)}): {why}.", f"learning_rate{where}@{base:g}", "lower")
        return Fix(f"Lower the learning rate{where} from {lr:g} to {_round(lr / factor):g}: {why}.",
                   f"learning_rate{where}@{lr:g}", "lower")
    return rule


def lower_lr_if_large_updates(factor: float, why: str) -> Callable[[ModelFacts, dict], str | None]:
    """``lower_lr``, unless the measured update/weight ratio (``update_ratio``) is no larger than healthy."""
    lower = lower_lr(factor, why)

    def rule(facts: ModelFacts, evidence: dict) -> str | None:
        ratio = evidence.get("update_ratio")
        if ratio is not None and math.isfinite(ratio) and ratio <= LARGE_UPDATES:
            return None
        return lower(facts, evidence)
    return rule


def clip(facts: ModelFacts, evidence: dict) -> str | None:
    norm = evidence.get("healthy_norm")
    if norm is None or not math.isfinite(norm) or norm <= 0:
        return Fix("Clip gradients with torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0) "
                   "between backward() and optimizer.step(): it bounds the step whatever the gradient does.",
                   "gradient_clipping", "add")
    return Fix(f"Clip gradients with torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm={_round(2 * norm):g}) "
               f"between backward() and optimizer.step(): healthy total gradient norms here were about {_round(norm):g}.",
               "gradient_clipping", "add")


def normalization(facts: ModelFacts, evidence: dict) -> str | None:
    if facts.normalization:
        return None
    layers = list(evidence.get("layers") or [])[:3]
    if not layers:
        conv = any(t.startswith("Conv") for t in facts.layer_types.values())
        kind = "BatchNorm2d" if conv else ("LayerNorm" if facts.has(*RECURRENT, "MultiheadAttention") else "BatchNorm1d/LayerNorm")
        where = " after each hidden weight layer"
    else:  # the norm that fits the weight layer each named layer is (or is fed by), right after that layer
        fitted = {}
        for layer in layers:
            weight = layer if layer in facts.weight_layers else facts.feeding_layer(layer) or layer
            fitted.setdefault(weight, NORM_FOR.get(facts.layer_types.get(weight, ""), _default_norm(facts)))
        kinds = list(dict.fromkeys(fitted.values()))
        kind = kinds[0] if len(kinds) == 1 else " / ".join(f"{k}" for k in kinds)
        where = " after " + ", ".join(f"`{w}`" + (f" ({k})" if len(kinds) > 1 else "") for w, k in fitted.items())
    return Fix(f"Add {kind}{where}: the model has no normalization layer, so activation and gradient scales "
               f"compound from layer to layer.", "normalization", "add")


NORM_FOR = {"Conv1d": "BatchNorm1d", "Conv2d": "BatchNorm2d", "Conv3d": "BatchNorm3d", "Linear": "BatchNorm1d/LayerNorm",
            "RNN": "LayerNorm", "LSTM": "LayerNorm", "GRU": "LayerNorm"}
"""The normalization that fits the output of each weight layer type."""


def _default_norm(facts: ModelFacts) -> str:
    return "LayerNorm" if facts.has(*RECURRENT, "MultiheadAttention") else "BatchNorm1d/LayerNorm"


def leaky_relu(facts: ModelFacts, evidence: dict) -> str | None:
    dead = [layer for layer in evidence.get("layers", []) if not _is_leaky(layer, facts)]
    if not dead:
        return None
    names = ", ".join(f"`{d}`" for d in dead[:4])
    return (f"Replace ReLU with LeakyReLU(0.01) or ELU in {names}: a dead ReLU unit passes no gradient, so it "
            f"cannot recover; a small negative slope keeps it trainable.")


def bias_init(facts: ModelFacts, evidence: dict) -> str | None:
    bias = evidence.get("preceding_bias_mean")
    if bias is None or bias > -NEGATIVE_BIAS:
        return None
    return (f"Initialise biases before these ReLUs at zero (or a small positive value): their mean bias is "
            f"{fmt(bias)}, which keeps pre-activations below zero.")


def relu_for_saturating(facts: ModelFacts, evidence: dict) -> str | None:
    sites = [s for s, k in facts.activations.items() if k in SATURATING]
    if len(facts.weight_layers) < 3 or len(sites) < 2:
        return None
    kinds = "/".join(sorted({facts.activations[s] for s in sites}))
    return (f"Use ReLU (or GELU) instead of {kinds} in the hidden layers ({len(sites)} {kinds} sites in a "
            f"{len(facts.weight_layers)}-layer stack): their derivatives are at most "
            f"{'0.25' if 'sigmoid' in kinds else '1'} and shrink gradients at every layer, to zero at saturation.")


def init_scale(facts: ModelFacts, evidence: dict) -> str | None:
    low, high = INIT_GAIN_RANGE
    off = {n: g for n, g in facts.init_gain.items() if math.isfinite(g) and not low <= g <= high}
    if not off:
        return None
    worst = max(off, key=lambda n: abs(math.log(max(off[n], 1e-12))))
    scheme = "xavier_normal_" if any(k in SATURATING for k in facts.activations.values()) else "kaiming_normal_(nonlinearity='relu')"
    return (f"Re-initialise weights with torch.nn.init.{scheme}: at attach, `{worst}` had std(W)*sqrt(fan_in) = "
            f"{off[worst]:.3g} ({len(off)} of {len(facts.init_gain)} weight layers outside {low:g}..{high:g}), so "
            f"signals {'shrink' if off[worst] < low else 'grow'} by that factor per layer.")


def residual(facts: ModelFacts, evidence: dict) -> str | None:
    if not facts.plain_stack or len(facts.weight_layers) < DEEP_STACK:
        return None
    return (f"Add residual (skip) connections: this is a plain stack of {len(facts.weight_layers)} weight layers, "
            f"and a skip path gives lower layers a gradient that does not pass through every layer above.")


def recurrent_clip(facts: ModelFacts, evidence: dict) -> str | None:
    if not facts.has("RNN"):
        return None
    return ("Use nn.LSTM or nn.GRU instead of nn.RNN: gating keeps the recurrent gradient from being multiplied by "
            "the same weight matrix at every time step.")


def nonfinite_root(facts: ModelFacts, evidence: dict) -> str | None:
    root = evidence.get("root")
    if root == "loss":
        return ("Make the loss numerically safe: use CrossEntropyLoss/BCEWithLogitsLoss on raw logits instead of "
                "log(softmax)/log(sigmoid), and clamp arguments of log/sqrt/division (e.g. x.clamp_min(1e-8)): the "
                "loss went non-finite while every activation was finite.")
    if root and root.startswith("activation:"):
        return (f"Inspect `{root.split(':', 1)[1]}`, the first activation in forward order that went non-finite "
                f"(inputs, weights and any division/log/exp feeding it); torch.autograd.set_detect_anomaly(True) "
                f"names the operation.")
    if root and root.startswith("grad:"):
        return (f"Inspect the backward pass of `{root.split(':', 1)[1]}`: its gradient went non-finite while the "
                f"forward pass was finite (sqrt/pow/division at 0?); torch.autograd.set_detect_anomaly(True) "
                f"names the operation.")
    return None


def dropout(facts: ModelFacts, evidence: dict) -> str | None:
    existing = facts.layers_of("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout")
    if existing:
        return (f"Raise the dropout rate of {', '.join(f'`{d}`' for d in existing[:3])} by about 0.1 (up to 0.5): "
                f"validation loss rises while training loss falls, so the model memorises the training set.")
    return ("Add nn.Dropout(p=0.3) after the hidden activations (0.1 in attention/transformer blocks): validation "
            "loss rises while training loss falls, so the model memorises the training set.")


def weight_decay(facts: ModelFacts, evidence: dict) -> str | None:
    wd = facts.weight_decay()
    name = type(facts.optimizer).__name__ if facts.optimizer is not None else "the optimizer"
    if wd:
        return Fix(f"Raise weight decay from {wd:g} to {_round(wd * 10):g}: it penalises the large weights that memorise.",
                   f"weight_decay@{wd:g}", "raise")
    if name == "Adam":
        return "Switch to AdamW with weight_decay=0.01: Adam's L2 penalty is weak with adaptive steps; AdamW decouples it."
    return f"Add weight decay (weight_decay=1e-4 in {name}): it penalises the large weights that memorise."


def early_stopping(facts: ModelFacts, evidence: dict) -> str | None:
    best = evidence.get("best_val_step")
    at = f" (best validation loss at step {best})" if best is not None else ""
    return (f"Stop early and keep the checkpoint with the lowest validation loss{at}: later steps only fit the "
            f"training set better.")


def plateau_lr(facts: ModelFacts, evidence: dict) -> str | None:
    found = facts.group(evidence.get("layers"))
    if found is None or not found[1].get("lr"):
        return None
    index, group = found
    lr, base, where = group["lr"], group.get("initial_lr"), _group_label(index, facts)
    ratio = evidence.get("update_ratio")
    if ratio is not None and ratio > LARGE_UPDATES:
        return Fix(f"Lower the learning rate{where} from {lr:g} to {_round(lr / 10):g}: updates are {_share(ratio)} of "
                   f"the weights per step (about 0.1% is healthy), so the optimizer bounces around instead of descending.",
                   f"learning_rate{where}@{lr:g}", "lower")
    if base and lr < base / 10:
        return None  # a scheduler decayed it: a flat loss at the end of a decay is expected, not a learning rate too low
    if ratio is not None and 0 < ratio < 1e-5:
        return Fix(f"Raise the learning rate{where} from {lr:g} to {_round(lr * 10):g}: updates are only "
                   f"{_share(ratio)} of the weights per step (about 0.1% is healthy).", f"learning_rate{where}@{lr:g}",
                   "raise")
    return None  # no update at all: the gradients are zero, which no learning rate changes


def heavy_decay(facts: ModelFacts, evidence: dict) -> str | None:
    """Weight decay that shrinks every weight faster than gradients can grow the small ones."""
    found = facts.group(evidence.get("layers"))
    if found is None:
        return None
    index, group = found
    wd, lr = float(group.get("weight_decay") or 0.0), float(group.get("lr") or 0.0)
    shrink = wd * lr
    if shrink < HEAVY_DECAY:
        return None
    half_life = math.log(0.5) / math.log(1 - min(shrink, 0.5))
    return Fix(f"Lower weight decay{_group_label(index, facts)} from {wd:g} to {_round(min(wd / 100, 1e-4 / lr)):g}: "
               f"with lr {lr:g} it shrinks every weight by {_share(shrink)} per step (to half in {half_life:.0f} steps), "
               f"which drives small weights, and the gradients through them, toward zero.",
               f"weight_decay{_group_label(index, facts)}@{wd:g}", "lower")


def momentum(facts: ModelFacts, evidence: dict) -> str | None:
    """SGD momentum above 0.9 multiplies the step by 1/(1 - momentum)."""
    found = facts.group(evidence.get("layers"))
    if found is None:
        return None
    index, group = found
    m = float(group.get("momentum") or 0.0)
    if m <= 0.9:
        return None
    return Fix(f"Lower momentum{_group_label(index, facts)} from {m:g} to 0.9: with momentum {m:g} each gradient moves "
               f"the weights {1 / (1 - m):.0f}x as far as the learning rate alone (0.9: 10x).",
               f"momentum{_group_label(index, facts)}@{m:g}", "lower")


def adam_eps(facts: ModelFacts, evidence: dict) -> str | None:
    """Adam's eps far above its default divides small gradients by eps instead of their own scale."""
    found = facts.group(evidence.get("layers"))
    if found is None or "eps" not in found[1] or "betas" not in found[1]:
        return None
    index, group = found
    eps = float(group["eps"])
    if eps < LARGE_EPS:
        return None
    return Fix(f"Lower {type(facts.optimizer).__name__}'s eps{_group_label(index, facts)} from {eps:g} to 1e-8: "
               f"gradients smaller than eps get steps of lr * grad / eps, far below lr, so layers with small "
               f"gradients barely move.", f"eps{_group_label(index, facts)}@{eps:g}", "lower")


def adam_beta2(facts: ModelFacts, evidence: dict) -> str | None:
    """A long second-moment memory lets a sudden large gradient through before the denominator catches up."""
    found = facts.group(evidence.get("layers"))
    if found is None or "betas" not in found[1]:
        return None
    index, group = found
    beta2 = float(group["betas"][1])
    if beta2 < 0.99:
        return None
    return Fix(f"Lower {type(facts.optimizer).__name__}'s beta2{_group_label(index, facts)} from {beta2:g} to 0.95: "
               f"its second-moment average remembers {1 / (1 - beta2):.0f} steps, so after a quiet stretch a large "
               f"gradient takes a step far larger than lr (LLM trainers use 0.95 against such spikes).",
               f"beta2{_group_label(index, facts)}@{beta2:g}", "lower")


def check_data(facts: ModelFacts, evidence: dict) -> str | None:
    return ("Check that inputs are scaled (about zero mean, unit variance) and that labels match inputs: a loss stuck "
            "near its starting value often means the model cannot see a signal.")


def skip_batch(facts: ModelFacts, evidence: dict) -> str | None:
    step = evidence.get("spike_step")
    return (f"Look at the batches of the steps up to {step} (log their indices, or rerun with the same seed): one "
            f"outlier, mislabelled or corrupt batch gives a spike that falls back; skip or fix it (LLM trainers skip "
            f"the batch and go on).")


def dropout_rate(facts: ModelFacts, evidence: dict) -> str | None:
    names = ", ".join(f"`{layer}`" for layer in evidence.get("layers") or [])
    return f"Set p to 0.1-0.5 in {names} (p is the share DROPPED, not kept)." if names else None


def remove_final_activation(facts: ModelFacts, evidence: dict) -> str | None:
    names = ", ".join(f"`{layer}`" for layer in evidence.get("layers") or [])
    return f"Remove {names} from the model and apply it only at inference." if names else None


def warmup(facts: ModelFacts, evidence: dict) -> str | None:
    return "Add a learning-rate warmup (e.g. linear over the first few hundred steps): early steps are the least stable."


CATALOGUE: dict[str, tuple[Callable[[ModelFacts, dict], str | None], ...]] = {
    "exploding_gradient": (
        lower_lr(10, "the gradient norm grew far beyond its own earlier scale, so each step overshoots"),
        clip, momentum, adam_beta2, recurrent_clip, normalization, init_scale),
    "gradient_spike": (skip_batch, clip, adam_beta2),
    "loss_spike": (skip_batch, clip, adam_beta2),
    "loss_divergence": (
        lower_lr(10, "the loss climbs above where training started, the sign of steps that overshoot"),
        clip, momentum, warmup, normalization),
    "nonfinite": (
        nonfinite_root,
        lower_lr(10, "values grew until they overflowed; a smaller step keeps them finite"),
        clip),
    "vanishing_gradient": (
        init_scale, heavy_decay, relu_for_saturating, adam_eps, normalization, residual),
    "saturated_activation": (
        relu_for_saturating, normalization, init_scale,
        lower_lr(3, "large updates drive pre-activations into the flat tails")),
    "dead_units": (
        init_scale, heavy_decay, leaky_relu, bias_init,
        lower_lr_if_large_updates(5, "large updates push ReLU pre-activations negative for every input, which kills units"),
        normalization),
    "loss_plateau": (
        heavy_decay, plateau_lr, adam_eps, relu_for_saturating, normalization, init_scale, check_data),
    "overfitting": (dropout, weight_decay, early_stopping),
    "suspicious_dropout": (dropout_rate,),
    "final_activation": (remove_final_activation,),
}


def _round(x: float) -> float:
    """Two significant digits, so suggested values read like settings people type."""
    return float(f"{x:.2g}") if x else x


def _group_label(index: int, facts: ModelFacts) -> str:
    """`` of parameter group N`` where the optimizer has several groups, else nothing."""
    groups = facts.optimizer.param_groups if facts.optimizer is not None else []
    return f" of parameter group {index}" if len(groups) > 1 else ""


def _share(ratio: float) -> str:
    """A small fraction as a percentage where that reads better (1.5%, 0.02%), else ``fmt`` (8.9e-07, exactly 0)."""
    if ratio < 1e-4:
        return fmt(ratio, 2)
    return f"{ratio * 100:.2g}%"


def _is_leaky(site: str, facts: ModelFacts) -> bool:
    return facts.layer_types.get(site.split("#")[0]) in LEAKY

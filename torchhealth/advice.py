"""Advice: ranked fixes for an alert, specific to the model and optimizer the monitor sees.

Every suggestion states what to change and why, and the catalogue never proposes adding what the
model already has (normalization, dropout, LeakyReLU, weight decay...). Inputs are the alert's kind,
its evidence (numbers the detector measured) and the model facts; the output is a list of strings,
most promising first.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from torchhealth.facts import ModelFacts

SATURATING = ("sigmoid", "tanh")
DEEP_STACK = 6
"""Weight layers from which a plain stack counts as deep (residual connections, ReLU advice)."""
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
        evidence: The detector's numbers; keys used here: ``layers`` (affected layers),
            ``healthy_norm`` (a gradient norm seen before trouble), ``root`` (non-finite source).

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
    """A rule: lower the optimizer's learning rate by ``factor`` (a concrete value when known)."""
    def rule(facts: ModelFacts, evidence: dict) -> str | None:
        lr = facts.learning_rate()
        if facts.optimizer is None:
            return Fix(f"Lower the learning rate about {factor:g}x: {why}.", "learning_rate", "lower")
        if not lr:
            return None
        return Fix(f"Lower the learning rate from {lr:g} to {_round(lr / factor):g}: {why}.", f"learning_rate@{lr:g}",
                   "lower")
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
    where = _after(evidence.get("layers"), facts)
    conv = any(t.startswith("Conv") for t in facts.layer_types.values())
    recurrent = facts.has(*RECURRENT)
    layer = "BatchNorm2d" if conv else ("LayerNorm" if recurrent or facts.has("MultiheadAttention") else "BatchNorm1d/LayerNorm")
    return Fix(f"Add {layer}{where}: the model has no normalization layer, so activation and gradient scales "
               f"compound from layer to layer.", "normalization", "add")


def leaky_relu(facts: ModelFacts, evidence: dict) -> str | None:
    dead = [layer for layer in evidence.get("layers", []) if not _is_leaky(layer, facts)]
    if not dead:
        return None
    names = ", ".join(f"`{d}`" for d in dead[:4])
    return (f"Replace ReLU with LeakyReLU(0.01) or ELU in {names}: a dead ReLU unit passes no gradient, so it "
            f"cannot recover; a small negative slope keeps it trainable.")


def bias_init(facts: ModelFacts, evidence: dict) -> str | None:
    bias = evidence.get("preceding_bias_mean")
    if bias is None or bias >= 0:
        return None
    return (f"Initialise biases before these ReLUs at zero (or a small positive value): their mean bias is "
            f"{bias:.3g}, which keeps pre-activations below zero.")


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
    lr = facts.learning_rate()
    if not lr:
        return None
    ratio = evidence.get("update_ratio")
    if ratio is not None and ratio > 1e-2:
        return Fix(f"Lower the learning rate from {lr:g} to {_round(lr / 10):g}: updates are {ratio:.2g} of the "
                   f"weights per step (about 1e-3 is healthy), so the optimizer bounces around instead of descending.",
                   f"learning_rate@{lr:g}", "lower")
    if ratio is not None and ratio < 1e-5:
        return Fix(f"Raise the learning rate from {lr:g} to {_round(lr * 10):g}: updates are only {ratio:.2g} of the "
                   f"weights per step (about 1e-3 is healthy).", f"learning_rate@{lr:g}", "raise")
    return None


def check_data(facts: ModelFacts, evidence: dict) -> str | None:
    return ("Check that inputs are scaled (about zero mean, unit variance) and that labels match inputs: a loss stuck "
            "near its starting value often means the model cannot see a signal.")


def skip_batch(facts: ModelFacts, evidence: dict) -> str | None:
    step = evidence.get("spike_step")
    return (f"Look at the batches of the steps up to {step} (log their indices, or rerun with the same seed): one "
            f"outlier, mislabelled or corrupt batch gives a spike that falls back; skip or fix it (LLM trainers skip "
            f"the batch and go on).")


def warmup(facts: ModelFacts, evidence: dict) -> str | None:
    return "Add a learning-rate warmup (e.g. linear over the first few hundred steps): early steps are the least stable."


CATALOGUE: dict[str, tuple[Callable[[ModelFacts, dict], str | None], ...]] = {
    "exploding_gradient": (
        lower_lr(10, "the gradient norm grew far beyond its own earlier scale, so each step overshoots"),
        clip, recurrent_clip, normalization, init_scale),
    "gradient_spike": (skip_batch, clip),
    "loss_spike": (skip_batch, clip),
    "loss_divergence": (
        lower_lr(10, "the loss climbs above where training started, the sign of steps that overshoot"),
        clip, warmup, normalization),
    "nonfinite": (
        nonfinite_root,
        lower_lr(10, "values grew until they overflowed; a smaller step keeps them finite"),
        clip),
    "vanishing_gradient": (
        relu_for_saturating, init_scale, normalization, residual),
    "saturated_activation": (
        relu_for_saturating, normalization, init_scale,
        lower_lr(3, "large updates drive pre-activations into the flat tails")),
    "dead_units": (
        leaky_relu, bias_init,
        lower_lr(5, "large updates push ReLU pre-activations negative for every input, which kills units"),
        normalization, init_scale),
    "loss_plateau": (
        plateau_lr, relu_for_saturating, normalization, init_scale, check_data),
    "overfitting": (dropout, weight_decay, early_stopping),
}


def _round(x: float) -> float:
    """Two significant digits, so suggested values read like settings people type."""
    return float(f"{x:.2g}") if x else x


def _after(layers: Any, facts: ModelFacts) -> str:
    if not layers:
        return " after each hidden weight layer"
    return " after " + ", ".join(f"`{layer}`" for layer in list(layers)[:3])


def _is_leaky(site: str, facts: ModelFacts) -> bool:
    return facts.layer_types.get(site.split("#")[0]) in LEAKY

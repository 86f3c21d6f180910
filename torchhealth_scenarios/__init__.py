"""Reproducible small training runs, healthy and faulty, for ``torchhealth demo``, tests and the detection benchmark.

A package of its own beside the ``torchhealth`` library (which never imports it but for the demo
command): the runs' data come from scikit-learn, an extra (``pip install "torchhealth[demo]"``; the
test extra has it too), and a monitoring library must not depend on it.

Every scenario trains a randomly initialised model on data that ships with scikit-learn (digits,
diabetes, ``make_*``) or on a synthetic sequence task, so nothing is downloaded. ``build(seed)``
returns a ``Run`` (model, optimizer, endless batches, loss function); ``run_scenario`` trains it with
a plain loop under a Monitor and returns what the monitor said.

Scenarios come in groups (``Scenario.group``): ``"development"`` (the runs the detector thresholds
were chosen on), ``"heldout"`` (written after the thresholds were fixed; the first review fixed
detector weaknesses they exposed, so they are no longer unseen), ``"heldout2"`` (written and frozen
before the detectors ever ran on them, in the second review) and ``"issue23"`` (runs written for
issue 23's diagnosis work: one root with several symptoms, spikes, optimizer settings, losses whose
scale follows the data; the detectors were changed while looking at them, so they are not unseen).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from torchhealth.records import Alert

NONFINITE_PATIENCE = 3
"""A run stops after this many consecutive non-finite losses (nothing more can be learned)."""


@dataclass
class Run:
    """One training setup.

    Attributes:
        model: The randomly initialised model.
        optimizer: Its optimizer.
        batches: Endless iterator of batches (tuples handed to ``loss_fn``).
        loss_fn: ``loss_fn(model, batch) -> scalar loss tensor`` (runs the forward pass).
        scaler: Optional ``torch.amp.GradScaler``.
        validate: Optional ``validate(model) -> float`` validation loss, reported every ``val_every`` steps.
        val_every: Steps between validation reports.
        stop_on_nonfinite: Stop after ``NONFINITE_PATIENCE`` non-finite losses (False: train on, as a loop
            that only logs its loss does, so that what non-finite weights do next is seen).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    batches: Iterator[tuple]
    loss_fn: Callable[[nn.Module, tuple], torch.Tensor]
    scaler: Any = None
    validate: Callable[[nn.Module], float] | None = None
    val_every: int = 10
    stop_on_nonfinite: bool = True


@dataclass(frozen=True)
class Scenario:
    """A named training run with the alert kinds it must raise (``()`` for healthy runs)."""

    name: str
    description: str
    expected: tuple[str, ...]
    steps: int
    build: Callable[[int], Run]
    group: str = "development"

    @property
    def heldout(self) -> bool:
        """True for scenarios outside the development set."""
        return self.group != "development"


@dataclass
class ScenarioResult:
    """What happened when a scenario ran under a Monitor."""

    scenario: Scenario
    alerts: list[Alert]
    first_nonfinite_step: int | None
    steps_run: int
    monitor: Any = field(repr=False, default=None)

    @property
    def kinds(self) -> list[str]:
        """Alert kinds raised, in order of first appearance."""
        return list(dict.fromkeys(a.kind for a in self.alerts))

    def first_step(self, kind: str) -> int | None:
        """Step of the first alert of ``kind`` (None if it never fired)."""
        return next((a.step for a in self.alerts if a.kind == kind), None)


def run_scenario(scenario: Scenario, *, steps: int | None = None, seed: int = 0, log_dir: str | os.PathLike | None = None,
                 on_step: Callable[[int, float, list[Alert]], None] | None = None, **monitor_options: Any) -> ScenarioResult:
    """Trains ``scenario`` under a Monitor with a plain loop and returns its alerts.

    The loop is ``loss.backward(); monitor.step(loss); optimizer.step(); optimizer.zero_grad()``
    (through the GradScaler when the run has one). It stops early at the first check step after the
    loss has been non-finite for ``NONFINITE_PATIENCE`` consecutive steps.

    Args:
        scenario: What to train.
        steps: Steps to train (default: ``scenario.steps``).
        seed: Seeds model init and batch order.
        log_dir: Passed to the Monitor (TensorBoard files and alerts.jsonl).
        on_step: Called as ``on_step(step, loss, new_alerts)`` after every step.
        **monitor_options: Monitor options (defaults when omitted).
    """
    from torchhealth.monitor import Monitor

    torch.manual_seed(seed)
    run = scenario.build(seed)
    monitor = Monitor(run.model, run.optimizer, log_dir=log_dir, **monitor_options)
    first_nonfinite, bad_streak, step = None, 0, 0
    total = scenario.steps if steps is None else steps
    try:
        for step in range(total):
            run.model.train()
            loss = run.loss_fn(run.model, next(run.batches))
            (run.scaler.scale(loss) if run.scaler is not None else loss).backward()
            val = None
            if run.validate is not None and step % run.val_every == 0:
                run.model.eval()
                with torch.no_grad():
                    val = run.validate(run.model)
            new = monitor.step(loss, val_loss=val)
            if run.scaler is not None:
                run.scaler.step(run.optimizer)
                run.scaler.update()
            else:
                run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
            value = float(loss.detach())
            if on_step is not None:
                on_step(step, value, new)
            if math.isfinite(value):
                bad_streak = 0
            else:
                first_nonfinite = step if first_nonfinite is None else first_nonfinite
                bad_streak += 1
                if (run.stop_on_nonfinite and bad_streak >= NONFINITE_PATIENCE
                        and step % monitor.options.check_every == 0):
                    break  # stop only right after a check, so the monitor has seen the non-finite steps
    finally:
        monitor.close()
    return ScenarioResult(scenario, list(monitor.alerts), first_nonfinite, step + 1, monitor)


# -- data ---------------------------------------------------------------------------------------------
def _standardize(x):
    x = torch.as_tensor(x, dtype=torch.float32)
    return (x - x.mean(0)) / x.std(0).clamp_min(1e-6)


def digits(images: bool = False, limit: int | None = None):
    """scikit-learn's 8x8 digits (1797 samples, 10 classes), standardized."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = _standardize(data.data)
    if images:
        x = x.reshape(-1, 1, 8, 8)
    y = torch.as_tensor(data.target, dtype=torch.long)
    return (x[:limit], y[:limit]) if limit else (x, y)


def diabetes(scale_targets: bool = False):
    """scikit-learn's diabetes regression (442 samples, targets 25..346 unless scaled)."""
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    y = torch.as_tensor(data.target, dtype=torch.float32).unsqueeze(1)
    return _standardize(data.data), (y - y.mean()) / y.std() if scale_targets else y


def wine():
    """scikit-learn's wine recognition (178 samples, 13 features, 3 classes), standardized."""
    from sklearn.datasets import load_wine

    data = load_wine()
    return _standardize(data.data), torch.as_tensor(data.target, dtype=torch.long)


def breast_cancer():
    """scikit-learn's breast cancer diagnosis (569 samples, 30 features, 2 classes), standardized."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    return _standardize(data.data), torch.as_tensor(data.target, dtype=torch.long)


def moons(seed: int, n: int = 1000, noise: float = 0.2):
    """``make_moons``: two interleaving half circles (2 features, 2 classes), standardized."""
    from sklearn.datasets import make_moons

    x, y = make_moons(n_samples=n, noise=noise, random_state=seed)
    return _standardize(x), torch.as_tensor(y, dtype=torch.long)


def blobs(seed: int, n: int = 1000, features: int = 16, classes: int = 4, spread: float = 1.0):
    """``make_classification``-style Gaussian blobs, standardized."""
    from sklearn.datasets import make_blobs

    x, y = make_blobs(n_samples=n, n_features=features, centers=classes, cluster_std=spread, random_state=seed)
    return _standardize(x), torch.as_tensor(y, dtype=torch.long)


def regression(seed: int, n: int = 1000, features: int = 10, scale: float = 1.0, noise: float = 0.0):
    """``make_regression`` with targets of the given scale."""
    from sklearn.datasets import make_regression

    x, y = make_regression(n_samples=n, n_features=features, noise=noise, random_state=seed)
    y = torch.as_tensor(y, dtype=torch.float32).unsqueeze(1)
    return _standardize(x), y / y.std() * scale


def sequences(seed: int, n: int = 1024, length: int = 12, vocab: int = 8, task: str = "recall"):
    """Synthetic sequence classification.

    ``task="recall"``: is the first token's id among the last three tokens? ``task="count"``: does
    token 0 occur more often than token 1?
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (n, length), generator=g)
    if task == "count":
        return x, ((x == 0).sum(1) > (x == 1).sum(1)).long()
    return x, (x[:, :1] == x[:, -3:]).any(1).long()


def sequence_sums(seed: int, n: int = 1024, length: int = 20, features: int = 4):
    """Synthetic sequence regression: the running mean of noisy inputs' first feature."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, length, features, generator=g)
    return x, x[:, :, 0].mean(1, keepdim=True) * 3


def batches(x, y, size: int, seed: int) -> Iterator[tuple]:
    """Endless shuffled minibatches of ``(x, y)``."""
    g = torch.Generator().manual_seed(seed)
    n = len(x)
    while True:
        order = torch.randperm(n, generator=g)
        for i in range(0, n - size + 1, size):
            idx = order[i:i + size]
            yield x[idx], y[idx]


# -- models --------------------------------------------------------------------------------------------
def mlp(sizes: list[int], activation: Callable[[], nn.Module] = nn.ReLU, init_std: float | None = None,
        bias: float | None = None) -> nn.Sequential:
    """Linear layers with ``activation`` between them; optional N(0, init_std) weights and constant biases."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        linear = nn.Linear(a, b)
        if init_std is not None:
            nn.init.normal_(linear.weight, std=init_std)
        if bias is not None and i < len(sizes) - 2:
            nn.init.constant_(linear.bias, bias)
        layers.append(linear)
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    """Conv-BN-ReLU(inplace) x2 on 8x8 images, then a linear classifier."""

    def __init__(self, width: int = 16, batchnorm: bool = True, conv_bias: float | None = None,
                 init_gain: float | None = None) -> None:
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if batchnorm else (lambda c: nn.Identity())
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), norm(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, padding=1), norm(2 * width), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(2))
        self.head = nn.Linear(8 * width, 10)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                if init_gain is not None:
                    nn.init.normal_(m.weight, std=init_gain / m.weight[0].numel() ** 0.5)
                if conv_bias is not None and isinstance(m, nn.Conv2d):
                    nn.init.constant_(m.bias, conv_bias)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class FunctionalMLP(nn.Module):
    """An MLP that calls ``F.relu``/``torch.tanh`` in ``forward`` (invisible to module hooks)."""

    def __init__(self, sizes: list[int], activation: Callable = F.relu) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
        self.activation = activation

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))
        return self.layers[-1](x)


class SequenceClassifier(nn.Module):
    """Embedding -> RNN/LSTM/GRU -> linear head on the last hidden state."""

    def __init__(self, cell: str = "LSTM", vocab: int = 8, hidden: int = 32, classes: int = 2, **rnn_kwargs) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.rnn = getattr(nn, cell)(hidden, hidden, batch_first=True, **rnn_kwargs)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        out, _ = self.rnn(self.embed(x) if x.dtype == torch.long else x)
        return self.head(out[:, -1])


class SequenceRegressor(SequenceClassifier):
    """A recurrent regressor over float sequences."""

    def __init__(self, cell: str = "RNN", features: int = 4, hidden: int = 32, **rnn_kwargs) -> None:
        nn.Module.__init__(self)
        self.rnn = getattr(nn, cell)(features, hidden, batch_first=True, **rnn_kwargs)
        self.head = nn.Linear(hidden, 1)


class TinyTransformer(nn.Module):
    """Token embedding + learned positions -> TransformerEncoder -> mean-pooled linear head."""

    def __init__(self, vocab: int = 8, length: int = 12, width: int = 32, layers: int = 2, heads: int = 4,
                 activation: str = "relu") -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.randn(length, width) * 0.02)
        block = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True, activation=activation)
        self.encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, 2)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x) + self.position).mean(1))


# -- losses ---------------------------------------------------------------------------------------------
def cross_entropy(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


def mse(model, batch):
    x, y = batch
    return F.mse_loss(model(x), y)


def handmade_bce(model, batch):
    """The classic bug: BCE written by hand on sigmoid outputs; 0 * log(0) = NaN once p rounds to 1."""
    x, y = batch
    p = torch.sigmoid(model(x)).squeeze(1)
    y = y.float()
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()


def onehot_mse(model, batch):
    """MSE between class scores and one-hot targets (unbounded output error, unlike cross-entropy)."""
    x, y = batch
    out = model(x)
    return F.mse_loss(out, F.one_hot(y, out.shape[1]).float())


def log_mse(model, batch):
    """MSE between log-predictions and log-targets: NaN as soon as a prediction goes negative."""
    x, y = batch
    return F.mse_loss(torch.log(model(x)), torch.log(y))


def gaussian_nll_unconstrained(model, batch):
    """Gaussian negative log-likelihood whose predicted variance is ``1 + output`` (the bug: nothing keeps
    it positive, so log(variance) turns NaN once training pushes one prediction below zero)."""
    x, y = batch
    out = model(x)
    mean, variance = out[:, :1], 1 + out[:, 1:]
    return (torch.log(variance) + (y - mean) ** 2 / variance).mean()


def _validation(x, y, loss=F.cross_entropy):
    return lambda model: float(loss(model(x), y))


# -- scenarios -------------------------------------------------------------------------------------------
def _classify(model, data, opt, lr, batch=64, seed=0, loss=cross_entropy, **opt_kwargs) -> Run:
    x, y = data
    return Run(model, opt(model.parameters(), lr=lr, **opt_kwargs), batches(x, y, batch, seed), loss)


SGD, ADAM, ADAMW = torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW


def _overfit(seed: int, width: int, lr: float) -> Run:
    x, y = digits()
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=g)
    train, val = order[:64], order[600:1100]
    model = mlp([64, width, width, 10])
    run = _classify(model, (x[train], y[train]), ADAM, lr, batch=32, seed=seed)
    run.validate = _validation(x[val], y[val])
    return run


def _with_validation(seed: int) -> Run:
    x, y = digits()
    run = _classify(mlp([64, 64, 10]), (x[:1400], y[:1400]), SGD, 0.05, seed=seed, momentum=0.9)
    run.validate = _validation(x[1400:], y[1400:])
    return run


def _sparse_but_alive(seed: int) -> Run:
    """First ReLU outputs are mostly zero (bias pushed down) yet every unit fires for some inputs."""
    model = mlp([64, 128, 64, 10])
    with torch.no_grad():
        model[0].bias.fill_(-1.2)
    return _classify(model, digits(), SGD, 0.02, seed=seed, momentum=0.9)


def _nan_loss(seed: int) -> Run:
    x, y = blobs(seed, features=8, classes=2, spread=0.5)
    return _classify(mlp([8, 32, 1]), (x * 4, y), SGD, 2.0, seed=seed, loss=handmade_bce)


def _log_loss(seed: int) -> Run:
    x, y = regression(seed, features=8)
    y = y.abs() + 0.1
    return _classify(FunctionalMLP([8, 32, 32, 1]), (x, y), SGD, 0.05, seed=seed, loss=log_mse)


def _softmax_head(seed: int) -> Run:
    return _classify(nn.Sequential(*mlp([64, 64, 10]), nn.Softmax(dim=1)), digits(), SGD, 0.1, seed=seed)


def _dropout_one(seed: int) -> Run:
    return _classify(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Dropout(1.0), nn.Linear(64, 10)),
                     digits(), ADAM, 1e-3, seed=seed)


def _sequence_run(model, seed, opt, lr, **opt_kwargs) -> Run:
    return _classify(model, sequences(seed), opt, lr, seed=seed, **opt_kwargs)


def _recurrent_explosion(seed: int, hidden: int, gain: float, lr: float, length: int = 20) -> Run:
    model = SequenceRegressor("RNN", hidden=hidden, nonlinearity="relu")
    with torch.no_grad():
        nn.init.orthogonal_(model.rnn.weight_hh_l0, gain=gain)
    x, y = sequence_sums(seed, length=length)
    return _classify(model, (x, y), SGD, lr, seed=seed, loss=mse)


def _scenario(name, description, expected, steps, build, group="development") -> Scenario:
    return Scenario(name, description, tuple(expected), steps, build, group)


DEV = [
    # healthy
    _scenario("healthy", "ReLU MLP on digits, Adam 1e-3", (), 300,
              lambda s: _classify(mlp([64, 64, 64, 10]), digits(), ADAM, 1e-3, seed=s)),
    _scenario("healthy_cnn_bn", "Conv-BatchNorm-ReLU(inplace) CNN on digits, SGD+momentum", (), 200,
              lambda s: _classify(SmallCNN(), digits(images=True), SGD, 0.05, seed=s, momentum=0.9)),
    # Labelled healthy until issue 23: large-but-falling gradient norms (no explosion), but half of the
    # second ReLU layer's units fire at step 0 only and never again (32 of 64 never positive on any of the
    # 442 inputs at the end); the window that closed at step 150 had seen them fire at step 0.
    _scenario("regression_big_targets_dead_half", "MLP regression on raw diabetes targets (scale 100), Adam 1e-2: "
              "half of the 2nd layer's units die at step 1", ("dead_units",), 300,
              lambda s: _classify(mlp([10, 64, 64, 1]), diabetes(), ADAM, 1e-2, seed=s, loss=mse)),
    _scenario("healthy_late_bounce", "Noise-free regression trained to ~0 loss (norms shrink, then bounce)", (), 600,
              lambda s: _classify(mlp([10, 32, 32, 1]), regression(s), ADAM, 1e-2, seed=s, loss=mse)),
    _scenario("healthy_lstm", "LSTM sequence classifier, Adam", (), 200,
              lambda s: _sequence_run(SequenceClassifier("LSTM"), s, ADAM, 3e-3)),
    _scenario("healthy_transformer", "2-layer transformer encoder counting tokens, AdamW 1e-3", (), 150,
              lambda s: _classify(TinyTransformer(), sequences(s, task="count"), ADAMW, 1e-3, seed=s)),
    _scenario("healthy_functional_relu", "MLP calling F.relu in forward, SGD", (), 300,
              lambda s: _classify(FunctionalMLP([64, 64, 64, 10]), digits(), SGD, 0.05, seed=s)),
    _scenario("healthy_sparse_relu", "ReLU layer ~80% zeros per batch but every unit alive", (), 300, _sparse_but_alive),
    _scenario("healthy_sigmoid_shallow", "One-hidden-layer sigmoid MLP on blobs, SGD 0.5", (), 300,
              lambda s: _classify(mlp([16, 32, 4], nn.Sigmoid), blobs(s), SGD, 0.5, seed=s)),
    _scenario("healthy_validation", "ReLU MLP with validation loss on held-out digits", (), 300, _with_validation),
    # faulty
    _scenario("vanishing", "10-layer sigmoid stack on digits, SGD", ("vanishing_gradient",), 300,
              lambda s: _classify(mlp([64] + [64] * 9 + [10], nn.Sigmoid), digits(), SGD, 0.1, seed=s)),
    _scenario("tiny_init", "6-layer ReLU MLP with N(0, 1e-3) weights", ("vanishing_gradient",), 300,
              lambda s: _classify(mlp([64] + [64] * 5 + [10], init_std=1e-3), digits(), SGD, 0.05, seed=s)),
    _scenario("exploding", "Regression MLP on diabetes, SGD with lr far too high (2.0)", ("exploding_gradient",), 100,
              lambda s: _classify(mlp([10, 64, 64, 1]), diabetes(scale_targets=True), SGD, 2.0, seed=s, loss=mse)),
    _scenario("lr_above_stability", "Linear regression, SGD lr just above 2/L", ("exploding_gradient", "loss_divergence"), 300,
              lambda s: _classify(nn.Linear(10, 1), diabetes(scale_targets=True), SGD, 1.1, seed=s, batch=442, loss=mse)),
    _scenario("huge_init", "4-layer regression MLP with weights 2x Kaiming, SGD 0.01", ("exploding_gradient",), 100,
              lambda s: _classify(mlp([10, 64, 64, 64, 1], init_std=2 * (2 / 64) ** 0.5), diabetes(scale_targets=True),
                                  SGD, 0.01, seed=s, loss=mse)),
    _scenario("recurrent_explosion", "ReLU RNN, recurrent gain 1.2, 40-step sequences, SGD 0.1", ("exploding_gradient",),
              200, lambda s: _recurrent_explosion(s, 32, 1.2, 0.1, length=40)),
    _scenario("dead_units", "ReLU MLP whose hidden biases start at -3", ("dead_units",), 200,
              lambda s: _classify(mlp([64, 64, 64, 10], bias=-3.0), digits(), SGD, 0.05, seed=s)),
    _scenario("dead_relu_high_lr", "ReLU MLP, SGD lr 3.0 kills units", ("dead_units",), 400,
              lambda s: _classify(mlp([64, 64, 64, 10]), digits(), SGD, 3.0, seed=s)),
    _scenario("nonfinite", "Hand-written BCE on sigmoid outputs: 0*log(0)=NaN", ("nonfinite",), 300, _nan_loss),
    _scenario("saturated_tanh", "tanh MLP with weights 5x Xavier", ("saturated_activation",), 200,
              lambda s: _classify(mlp([64, 64, 64, 10], nn.Tanh, init_std=5 / 8), digits(), SGD, 0.01, seed=s)),
    _scenario("overfitting", "Wide MLP on 64 training digits, validation on 500 others", ("overfitting",), 400,
              lambda s: _overfit(s, 256, 3e-3)),
    _scenario("lr_far_too_low", "ReLU MLP, SGD lr 1e-6: nothing moves", ("loss_plateau",), 200,
              lambda s: _classify(mlp([64, 64, 10]), digits(), SGD, 1e-6, seed=s)),
    _scenario("softmax_before_ce", "Softmax on the output before CrossEntropyLoss", ("final_activation",), 50, _softmax_head),
    _scenario("dropout_one", "Dropout(p=1.0) in the model", ("suspicious_dropout",), 50, _dropout_one),
]

HELDOUT = [
    _scenario("h_healthy_mlp_sgd_wide", "Wide ReLU MLP, SGD+momentum 0.02, seed 7", (), 300,
              lambda s: _classify(mlp([64, 256, 10]), digits(), SGD, 0.02, seed=s + 7, momentum=0.9), "heldout"),
    _scenario("h_healthy_cnn_adamw", "CNN without BatchNorm, AdamW 2e-3", (), 200,
              lambda s: _classify(SmallCNN(width=8, batchnorm=False), digits(images=True), ADAMW, 2e-3, seed=s), "heldout"),
    _scenario("h_healthy_gru", "GRU sequence classifier, Adam 5e-3", (), 200,
              lambda s: _sequence_run(SequenceClassifier("GRU", hidden=24), s, ADAM, 5e-3), "heldout"),
    _scenario("h_healthy_transformer_gelu", "3-layer GELU transformer, width 48, AdamW 5e-4", (), 120,
              lambda s: _sequence_run(TinyTransformer(width=48, layers=3, activation="gelu"), s, ADAMW, 5e-4), "heldout"),
    _scenario("h_healthy_regression_scale_1000", "MLP regression on targets of scale 1000, SGD 1e-3", (), 300,
              lambda s: _classify(mlp([10, 48, 1]), regression(s + 3, scale=1000.0, noise=1.0), SGD, 1e-4, seed=s, loss=mse), "heldout"),
    _scenario("h_healthy_functional_tanh", "Functional tanh MLP on blobs, Adam", (), 300,
              lambda s: _classify(FunctionalMLP([16, 48, 48, 4], torch.tanh), blobs(s + 1), ADAM, 2e-3, seed=s), "heldout"),
    _scenario("h_healthy_rnn_regression", "Tanh RNN regression, SGD 0.05", (), 300,
              lambda s: _classify(SequenceRegressor("RNN", hidden=16), sequence_sums(s), SGD, 0.05, seed=s, loss=mse), "heldout"),
    _scenario("h_healthy_deep_bn", "8-layer ReLU MLP with BatchNorm, SGD 0.1", (), 300,
              lambda s: _classify(nn.Sequential(*[m for i in range(7) for m in (nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU())],
                                                nn.Linear(64, 10)), digits(), SGD, 0.1, seed=s), "heldout"),
    _scenario("h_healthy_adam_converges", "Small MLP on easy blobs trained to ~0 loss, Adam 1e-2", (), 500,
              lambda s: _classify(mlp([16, 32, 4]), blobs(s + 2, spread=0.5), ADAM, 1e-2, seed=s), "heldout"),
    _scenario("h_healthy_validation_cnn", "CNN with validation reports", (), 200,
              lambda s: _cnn_with_validation(s), "heldout"),
    # faulty
    _scenario("h_vanishing_tanh_deep", "14-layer tanh stack, width 32, N(0, 0.05) init, SGD+momentum", ("vanishing_gradient",), 300,
              lambda s: _classify(mlp([64] + [32] * 13 + [10], nn.Tanh, init_std=0.05), digits(), SGD, 0.05, seed=s,
                                  momentum=0.9), "heldout"),
    _scenario("h_tiny_init_cnn", "CNN without BatchNorm, conv/linear weights 1e-3 of Kaiming", ("vanishing_gradient",), 200,
              lambda s: _classify(SmallCNN(width=8, batchnorm=False, init_gain=1e-3), digits(images=True), SGD, 0.05,
                                  seed=s), "heldout"),
    # Adam bounds each step, so lr 1.0 does not blow gradients up (they collapse); what happens is the
    # loss climbing from 0.7 to ~8 within 30 steps: the fault this run shows is loss_divergence.
    _scenario("h_lr_far_too_high_adam", "Transformer, Adam lr 1.0: the loss diverges", ("loss_divergence",), 150,
              lambda s: _sequence_run(TinyTransformer(), s, ADAM, 1.0), "heldout"),
    _scenario("h_lr_above_stability_mlp", "Regression MLP, SGD lr 0.3 on scale-1 targets", ("exploding_gradient",), 300,
              lambda s: _classify(mlp([10, 32, 1]), regression(s + 5, scale=10.0), SGD, 0.3, seed=s, batch=128, loss=mse),
              "heldout"),
    # Under cross-entropy the huge init only gave large-but-falling gradients (the trap, not a fault);
    # with MSE on one-hot targets the output error is unbounded and the norm grows ~1e6x per step.
    _scenario("h_huge_init_cnn", "CNN without BatchNorm, weights 8x Kaiming, MSE on one-hot targets, SGD 0.01",
              ("exploding_gradient",), 200,
              lambda s: _classify(SmallCNN(width=8, batchnorm=False, init_gain=8 * 2 ** 0.5), digits(images=True), SGD,
                                  0.01, seed=s, loss=onehot_mse), "heldout"),
    # lr 0.003 never grew the recurrent gain (norms stayed 0.2-0.6); at lr 0.1 it does: norm ~0.3 until
    # step 20, 1.15 at 25, 177 at 26, 8.6e11 at 27, NaN at 28.
    _scenario("h_recurrent_explosion_long", "ReLU RNN, recurrent gain 1.15, 40-step sequences, hidden 48, SGD 0.1",
              ("exploding_gradient",), 200, lambda s: _recurrent_explosion(s + 11, 48, 1.15, 0.1, length=40), "heldout"),
    _scenario("h_dead_units_cnn_bias", "CNN without BatchNorm, conv biases -4", ("dead_units",), 200,
              lambda s: _classify(SmallCNN(width=8, batchnorm=False, conv_bias=-4.0), digits(images=True), SGD, 0.05,
                                  seed=s), "heldout"),
    # lr 2.0 overflowed before any unit died; at 1.6 the loss stays finite and 92% of the second
    # layer's units are never positive on the whole data set after 300 steps. 400 steps (as its development
    # twin) so that a dead-unit window (160 steps) closes after the units died.
    _scenario("h_dead_relu_functional_sgd", "Functional-ReLU MLP, SGD lr 1.6 kills units", ("dead_units",), 400,
              lambda s: _classify(FunctionalMLP([64, 96, 96, 10]), digits(), SGD, 1.6, seed=s + 4), "heldout"),
    _scenario("h_nan_log_loss", "MSE of log-predictions: log of a negative prediction", ("nonfinite",), 200, _log_loss, "heldout"),
    _scenario("h_saturated_sigmoid", "Sigmoid MLP with weights 6x Xavier, Adam", ("saturated_activation",), 200,
              lambda s: _classify(mlp([64, 48, 48, 10], nn.Sigmoid, init_std=6 / 8), digits(), ADAM, 1e-3, seed=s), "heldout"),
    _scenario("h_overfitting_narrow", "MLP width 128 on 64 digits, AdamW wd=0, seed 5", ("overfitting",), 400,
              lambda s: _overfit(s + 5, 128, 5e-3), "heldout"),
]


def _cnn_with_validation(seed: int) -> Run:
    x, y = digits(images=True)
    run = _classify(SmallCNN(width=8), (x[:1400], y[:1400]), ADAM, 2e-3, seed=seed)
    run.validate = _validation(x[1400:], y[1400:])
    return run


def _overfit_wine(seed: int) -> Run:
    x, y = wine()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, val = order[:24], order[60:]
    run = _classify(mlp([13, 512, 512, 3]), (x[train], y[train]), ADAM, 2e-3, batch=24, seed=seed)
    run.validate = _validation(x[val], y[val])
    return run


def _deep_bn_cnn(seed: int) -> Run:
    return _classify(SmallCNN(width=12), digits(images=True), ADAM, 1e-3, seed=seed + 13)


# Written and frozen before any detector ran on them (second review); each faulty run's fault was
# checked on raw statistics by benchmarks/fault_evidence.py, without a Monitor.
HELDOUT2 = [
    _scenario("n_healthy_wine_adamw", "ReLU MLP 13-32-32-3 on wine, AdamW 3e-3, batch 32", (), 300,
              lambda s: _classify(mlp([13, 32, 32, 3]), wine(), ADAMW, 3e-3, batch=32, seed=s + 21), "heldout2"),
    _scenario("n_healthy_cancer_tanh_sgd", "tanh MLP 30-24-24-2 on breast cancer, SGD+momentum 0.05", (), 300,
              lambda s: _classify(mlp([30, 24, 24, 2], nn.Tanh), breast_cancer(), SGD, 0.05, batch=32, seed=s + 22,
                                  momentum=0.9), "heldout2"),
    _scenario("n_healthy_cnn_bn_w12", "Conv-BN-ReLU(inplace) CNN width 12 on digits, Adam 1e-3", (), 200, _deep_bn_cnn,
              "heldout2"),
    _scenario("n_healthy_lstm2_count", "2-layer LSTM, hidden 40, counting tokens, AdamW 3e-3", (), 200,
              lambda s: _classify(SequenceClassifier("LSTM", hidden=40, num_layers=2), sequences(s + 23, task="count"),
                                  ADAMW, 3e-3, seed=s + 23), "heldout2"),
    _scenario("n_healthy_transformer_w40", "2-layer transformer width 40, 4 heads, counting tokens, Adam 1e-3", (), 150,
              lambda s: _classify(TinyTransformer(width=40), sequences(s + 24, task="count"), ADAM, 1e-3, seed=s + 24),
              "heldout2"),
    _scenario("n_healthy_functional_moons", "Functional-ReLU MLP 2-64-64-2 on make_moons, SGD 0.1", (), 300,
              lambda s: _classify(FunctionalMLP([2, 64, 64, 2]), moons(s + 25), SGD, 0.1, seed=s + 25), "heldout2"),
    # Labelled healthy until issue 23 (a whole-data check then found 23 of the 32 units of the last ReLU
    # layer never positive on any input at the end: 72% dead): kept in its set, with its fault.
    _scenario("n_diabetes_deep_raw_dead_units", "5-layer ReLU MLP on raw diabetes targets (scale 100), AdamW 3e-3: "
              "72% of the last hidden layer's units die", ("dead_units",), 300,
              lambda s: _classify(mlp([10, 32, 32, 32, 32, 1]), diabetes(), ADAMW, 3e-3, batch=32, seed=s + 26, loss=mse),
              "heldout2"),
    # faulty
    _scenario("n_vanishing_sigmoid_wine", "12-layer sigmoid stack, width 16, on wine, SGD 0.05", ("vanishing_gradient",),
              300, lambda s: _classify(mlp([13] + [16] * 11 + [3], nn.Sigmoid), wine(), SGD, 0.05, batch=32, seed=s + 31),
              "heldout2"),
    _scenario("n_exploding_diabetes_momentum", "4-layer regression MLP on scaled diabetes, SGD 0.4 + momentum 0.9",
              ("exploding_gradient",), 200,
              lambda s: _classify(mlp([10, 48, 48, 48, 1]), diabetes(scale_targets=True), SGD, 0.4, batch=32, seed=s + 32,
                                  loss=mse, momentum=0.9), "heldout2"),
    _scenario("n_dead_units_cancer_bias", "ReLU MLP 30-64-64-2 on breast cancer, hidden biases -4, Adam 1e-3",
              ("dead_units",), 300,
              lambda s: _classify(mlp([30, 64, 64, 2], bias=-4.0), breast_cancer(), ADAM, 1e-3, batch=32, seed=s + 33),
              "heldout2"),
    _scenario("n_nonfinite_gaussian_nll", "Gaussian NLL with an unconstrained variance (log of a negative)",
              ("nonfinite",), 300,
              lambda s: _classify(FunctionalMLP([10, 32, 2]), diabetes(scale_targets=True), SGD, 0.05, batch=32,
                                  seed=s + 34, loss=gaussian_nll_unconstrained), "heldout2"),
    _scenario("n_saturated_tanh_cancer", "tanh MLP 30-64-64-2 with weights 4x Xavier on breast cancer, SGD 0.01",
              ("saturated_activation",), 200,
              lambda s: _classify(mlp([30, 64, 64, 2], nn.Tanh, init_std=4 * (2 / 94) ** 0.5), breast_cancer(), SGD, 0.01,
                                  batch=32, seed=s + 35), "heldout2"),
    _scenario("n_divergence_lstm_adam", "LSTM sequence regression, hidden 32, Adam lr 1.0", ("loss_divergence",), 150,
              lambda s: _classify(SequenceRegressor("LSTM", hidden=32), sequence_sums(s + 36), ADAM, 1.0, seed=s + 36,
                                  loss=mse), "heldout2"),
    _scenario("n_plateau_transformer_lr_tiny", "Transformer width 32, AdamW lr 1e-7: nothing moves", ("loss_plateau",), 200,
              lambda s: _classify(TinyTransformer(), sequences(s + 37, task="count"), ADAMW, 1e-7, seed=s + 37), "heldout2"),
    _scenario("n_overfitting_wine", "MLP width 512 on 24 wine samples, validation on 118 others, Adam", ("overfitting",),
              400, _overfit_wine, "heldout2"),
]

# -- issue 23: one root with several symptoms, spikes that recover, the whole optimizer, data-scaled losses ----
def _mislabelled(x, y, size: int, seed: int, at: tuple[int, ...]) -> Iterator[tuple]:
    """``batches`` whose batches at steps ``at`` have every binary label flipped (a corrupt shard)."""
    for step, (bx, by) in enumerate(batches(x, y, size, seed)):
        yield bx, (1 - by if step in at else by)


def _corrupted(x, y, size: int, seed: int, at: int) -> Iterator[tuple]:
    """``batches`` whose batch at step ``at`` holds one Inf input (a corrupt record)."""
    for step, (bx, by) in enumerate(batches(x, y, size, seed)):
        if step == at:
            bx = bx.clone()
            bx[0, 0] = math.inf
        yield bx, by


def _plateau_then_spike(cell: str, seed: int) -> Run:
    """A recurrent net that sits on a plateau with tiny gradients (zero-initialised head, small
    embeddings), learns (norms rise 10-30x), and meets two mislabelled batches at steps 200-201."""
    model = SequenceClassifier(cell, hidden=32)
    with torch.no_grad():
        model.embed.weight.mul_(0.05)
        model.head.weight.zero_()
    x, y = sequences(seed + 1, task="count")
    return Run(model, ADAM(model.parameters(), lr=3e-3), _mislabelled(x, y, 64, seed, (200, 201)), cross_entropy)


class ResidualMLP(nn.Module):
    """``blocks`` residual blocks x + W2 relu(W1 x) between a linear stem and head."""

    def __init__(self, width: int = 32, blocks: int = 16, inputs: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Linear(inputs, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
                                    for _ in range(blocks))
        self.head = nn.Linear(width, classes)
        for block in self.blocks:
            nn.init.zeros_(block[2].weight)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


def _nan_residual(seed: int) -> Run:
    """16 residual blocks; one corrupt record at step 40 turns the weights NaN, and the loop trains on."""
    x, y = digits()
    model = ResidualMLP()
    run = Run(model, SGD(model.parameters(), lr=0.05), _corrupted(x, y, 64, seed, 40), cross_entropy)
    run.stop_on_nonfinite = False
    return run


class CartPole:
    """The classic cart-pole (Barto, Sutton and Anderson 1983), Euler steps of 0.02 s.

    An episode ends when the pole leans past 12 degrees, the cart leaves the track, or at ``limit`` steps.
    """

    def __init__(self, seed: int, limit: int = 200) -> None:
        self.generator, self.limit = torch.Generator().manual_seed(seed), limit
        self.state, self.t = torch.zeros(4), 0

    def reset(self) -> torch.Tensor:
        self.state, self.t = (torch.rand(4, generator=self.generator) - 0.5) * 0.1, 0
        return self.state.clone()

    def step(self, push_right: bool) -> tuple[torch.Tensor, bool]:
        x, v, angle, spin = self.state.tolist()
        force = 10.0 if push_right else -10.0
        cos, sin = math.cos(angle), math.sin(angle)
        temp = (force + 0.05 * spin * spin * sin) / 1.1
        spin_acc = (9.8 * sin - cos * temp) / (0.5 * (4 / 3 - 0.1 * cos * cos / 1.1))
        x_acc = temp - 0.05 * spin_acc * cos / 1.1
        x, v, angle, spin = x + 0.02 * v, v + 0.02 * x_acc, angle + 0.02 * spin, spin + 0.02 * spin_acc
        self.state, self.t = torch.tensor([x, v, angle, spin]), self.t + 1
        return self.state.clone(), abs(x) > 2.4 or abs(angle) > 0.2095 or self.t >= self.limit


def _episodes(policy: nn.Module, seed: int, gamma: float = 0.99) -> Iterator[tuple]:
    """Endless episodes of ``policy`` on CartPole: (observations, actions, centred discounted returns)."""
    env, generator = CartPole(seed), torch.Generator().manual_seed(seed + 1)
    while True:
        observations, actions, done = [], [], False
        observation = env.reset()
        with torch.no_grad():
            while not done:
                action = int(torch.multinomial(torch.softmax(policy(observation), -1), 1, generator=generator))
                observations.append(observation)
                actions.append(action)
                observation, done = env.step(bool(action))
        returns, total = [], 0.0
        for _ in actions:
            total = 1.0 + gamma * total
            returns.append(total)
        returns = torch.tensor(returns[::-1])
        yield torch.stack(observations), torch.tensor(actions), returns - returns.mean()


def reinforce(model, batch):
    """REINFORCE summed over one episode: its scale (and its gradient's) follows the episode's length."""
    observations, actions, advantages = batch
    log_p = torch.log_softmax(model(observations), -1).gather(1, actions[:, None]).squeeze(1)
    return -(log_p * advantages).sum()


def _cartpole(seed: int) -> Run:
    policy = mlp([4, 64, 2], nn.Tanh)
    return Run(policy, ADAM(policy.parameters(), lr=1e-2), _episodes(policy, seed), reinforce)


class GAN(nn.Module):
    """A generator and a discriminator on 2-d points (one module, so one Monitor watches both)."""

    def __init__(self, noise: int = 8, width: int = 64) -> None:
        super().__init__()
        self.generator = nn.Sequential(nn.Linear(noise, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                       nn.Linear(width, 2))
        self.discriminator = nn.Sequential(nn.Linear(2, width), nn.LeakyReLU(0.2), nn.Linear(width, width),
                                           nn.LeakyReLU(0.2), nn.Linear(width, 1))
        self.noise = noise


def _gan(seed: int, d_lr: float = 1e-3) -> Run:
    """Non-saturating GAN on a ring of 8 Gaussians: the discriminator steps inside the loss function,
    the run's optimizer steps the generator (its loss is what the monitor sees)."""
    model = GAN()
    g = torch.Generator().manual_seed(seed)
    centres = torch.stack([torch.tensor([math.cos(a), math.sin(a)]) * 2 for a in torch.arange(8) * math.pi / 4])
    d_opt = ADAM(model.discriminator.parameters(), lr=d_lr, betas=(0.5, 0.999))

    def data() -> Iterator[tuple]:
        while True:
            real = centres[torch.randint(0, 8, (64,), generator=g)] + 0.05 * torch.randn(64, 2, generator=g)
            yield real, torch.randn(64, model.noise, generator=g)

    def loss_fn(model, batch):
        real, z = batch
        fake = model.generator(z)
        d_loss = (F.binary_cross_entropy_with_logits(model.discriminator(real), torch.ones(64, 1))
                  + F.binary_cross_entropy_with_logits(model.discriminator(fake.detach()), torch.zeros(64, 1)))
        d_opt.zero_grad()
        d_loss.backward()
        d_opt.step()
        d_opt.zero_grad()
        return F.binary_cross_entropy_with_logits(model.discriminator(fake), torch.ones(64, 1))

    return Run(model, ADAM(model.generator.parameters(), lr=1e-3, betas=(0.5, 0.999)), data(), loss_fn)


ISSUE23 = [
    # healthy (advisories allowed: a spike that falls back is no false alarm)
    _scenario("i_healthy_gru_plateau_spike", "GRU: plateau with tiny gradients, learning (norms 10-30x), two "
              "mislabelled batches at steps 200-201", (), 300, lambda s: _plateau_then_spike("GRU", s), "issue23"),
    _scenario("i_healthy_lstm_plateau_spike", "LSTM: plateau with tiny gradients, learning, two mislabelled batches "
              "at steps 200-201", (), 300, lambda s: _plateau_then_spike("LSTM", s), "issue23"),
    _scenario("i_healthy_adam_fast_wine", "ReLU MLP 13-64-64-3 on wine, Adam 3e-2: the loss falls 50x by the third check",
              (), 300, lambda s: _classify(mlp([13, 64, 64, 3]), wine(), ADAM, 3e-2, batch=32, seed=s), "issue23"),
    _scenario("i_healthy_adadelta_digits", "ReLU MLP on digits, Adadelta lr 1.0 (start-up transient)", (), 200,
              lambda s: _classify(mlp([64, 64, 64, 10]), digits(), torch.optim.Adadelta, 1.0, seed=s), "issue23"),
    _scenario("i_healthy_reinforce_cartpole", "REINFORCE on CartPole, loss summed over episodes of 10-200 steps, "
              "Adam 1e-2", (), 300, _cartpole, "issue23"),
    _scenario("i_healthy_reinforce_cartpole_seed2", "The same, another seed (episodes grow from step 5)", (), 300,
              lambda s: _cartpole(s + 2), "issue23"),
    # its summed loss stays positive for the first 12 steps while the episodes grow, so nothing yet shows
    # it is a surrogate: one long episode at step 12 (44x the start) must read as a spike, not a divergence
    _scenario("i_healthy_reinforce_cartpole_seed3", "The same, a third seed (the loss stays positive while the first "
              "episodes grow)", (), 300, lambda s: _cartpole(s + 3), "issue23"),
    _scenario("i_healthy_gan_ring", "Non-saturating GAN on a ring of 8 Gaussians, Adam 1e-3 (betas 0.5, 0.999)", (), 300,
              _gan, "issue23"),
    _scenario("i_healthy_steplr_decay", "ReLU MLP on digits, SGD 0.1 decayed 10x every 50 steps by StepLR", (), 300,
              lambda s: _scheduled(s), "issue23"),
    _scenario("i_healthy_long_warmup", "ReLU MLP on digits, SGD 0.1 after a 3000-step linear warmup (the loss "
              "barely moves for the first hundreds of steps)", (), 300, lambda s: _scheduled(s, warmup=3000), "issue23"),
    # faulty: one root, several symptoms
    _scenario("i_nan_residual_16_blocks", "16 residual ReLU blocks; one Inf record at step 40 turns the weights NaN; "
              "the loop trains on", ("nonfinite",), 120, _nan_residual, "issue23"),
    _scenario("i_heavy_weight_decay", "4-layer ReLU MLP on digits, SGD 0.1 + momentum 0.9, weight_decay 0.3",
              ("vanishing_gradient",), 300,
              lambda s: _classify(mlp([64] + [64] * 3 + [10]), digits(), SGD, 0.1, seed=s, weight_decay=0.3,
                                  momentum=0.9), "issue23"),
    _scenario("i_heavy_weight_decay_deep", "6-layer ReLU MLP on digits, SGD 0.05, weight_decay 0.3: units die, "
              "lower layers starve", ("vanishing_gradient",), 300,
              lambda s: _classify(mlp([64] + [64] * 5 + [10]), digits(), SGD, 0.05, seed=s, weight_decay=0.3), "issue23"),
    _scenario("i_gan_discriminator_lr_far_too_high", "The same GAN, discriminator lr 1.0: it diverges",
              ("loss_divergence",), 300, lambda s: _gan(s, d_lr=1.0), "issue23"),
]


def _scheduled(seed: int, warmup: int = 0) -> Run:
    """SGD 0.1 under StepLR (10x down every 50 steps), or a linear warmup over ``warmup`` steps; the
    scheduler is stepped after each optimizer step."""
    run = _classify(mlp([64, 64, 64, 10]), digits(), SGD, 0.1, seed=seed)
    scheduler = (torch.optim.lr_scheduler.LambdaLR(run.optimizer, lambda k: min(1.0, (k + 1) / warmup)) if warmup
                 else torch.optim.lr_scheduler.StepLR(run.optimizer, step_size=50, gamma=0.1))
    steps = iter(range(10 ** 9))

    def loss_fn(model, batch):
        if next(steps):  # from the second step on: the previous optimizer.step() has run
            scheduler.step()
        return cross_entropy(model, batch)
    run.loss_fn = loss_fn
    return run


SCENARIOS: dict[str, Scenario] = {s.name: s for s in DEV + HELDOUT + HELDOUT2 + ISSUE23}
DEMO_SCENARIOS = ("healthy", "vanishing", "exploding", "dead_units", "nonfinite")

"""Monitor: owns the hooks and the schedule; wires collectors -> snapshot -> detectors -> sinks."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import torch
from torch import nn

from torchhealth import distributed
from torchhealth.collectors import ActivationCollector, Collector, GradientCollector, LossCollector, WeightCollector
from torchhealth.detectors import Alert, Detector, default_detectors
from torchhealth.errors import TrainingHealthError
from torchhealth.facts import ModelFacts
from torchhealth.layers import parameter_layers, unwrap
from torchhealth.options import MonitorOptions, alert_handlers
from torchhealth.safety import Guard
from torchhealth.sinks import CallbackSink, JsonlAlertSink, LoggingSink, Sink, TensorBoardSink, WarningSink
from torchhealth.snapshot import Snapshot


class Monitor:
    """Watches one model's training health.

    Call ``step(loss)`` once per training step, after ``backward()`` and before ``zero_grad()``.
    Statistics accumulate on the device; every ``check_every`` steps they are copied to the host
    in one transfer, written to TensorBoard (every ``log_every`` steps) and checked by the detectors.

    Args:
        model: The module to watch (DDP/FSDP wrappers are looked through).
        optimizer: Its optimizer; enables measured update/weight ratios and learning-rate advice.
        log_dir: Directory for TensorBoard event files and ``alerts.jsonl``; None writes no files.
        **options: See ``MonitorOptions`` (``check_every``, ``log_every``, ``sample_every``,
            ``window_samples``, ``on_alert``, ``strict``, ...).

    Example:
        >>> monitor = torchhealth.Monitor(model, optimizer=opt, log_dir="runs/exp1")
        >>> loss.backward(); monitor.step(loss); opt.step()
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                 log_dir: str | os.PathLike | None = None, **options: Any) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
        self.options = MonitorOptions.from_kwargs(**options)
        self.model = model
        self.optimizer = optimizer
        self.rank, self.world_size = distributed.rank_and_world()
        self.log_dir = _writable_dir(log_dir) if log_dir is not None and self.rank == 0 else (
            os.fspath(log_dir) if log_dir is not None else None)
        self.guard = Guard(self.options.strict)
        self.alerts: list[Alert] = []
        self.step_count = 0
        self._interval_start = 0
        self._closed = False

        inner = unwrap(model)
        self.facts = ModelFacts.from_model(inner, optimizer)
        params = list(parameter_layers(inner))
        device = params[0][2].device if params else torch.device("cpu")
        self.loss_collector = LossCollector(device, self.options.check_every)
        self.activations = ActivationCollector(
            inner, self.facts, self.options.check_every, self.options.window_samples,
            functional=self.options.functional_activations, guard=self.guard)
        self.weights = WeightCollector(params, device) if optimizer is not None else None
        self.collectors: dict[str, Collector] = {
            "loss": self.loss_collector,
            "gradients": GradientCollector(params, device, self.options.per_parameter),
            "activations": self.activations,
        }
        if self.weights is not None:
            self.collectors["weights"] = self.weights

        self.detectors: list[Detector] = default_detectors(self.options)
        self.metric_sinks: list[Sink] = []
        self.alert_sinks: list[Sink] = []
        self._raise_on_critical = False
        self._build_sinks()
        self._deliver([a for d in self.detectors
                       for a in self.guard.call(f"detector {d.kind}", d.static_check, inner, self.facts, default=[])])

    # -- public API ------------------------------------------------------------------------------
    def step(self, loss: torch.Tensor | float | None = None, *, val_loss: torch.Tensor | float | None = None) -> list[Alert]:
        """Records one training step; on check steps reads statistics and runs the detectors.

        Args:
            loss: This step's training loss (tensor or number), optional.
            val_loss: A validation loss to report with this step, optional.

        Returns:
            The alerts raised at this step (usually empty).

        Raises:
            TrainingHealthError: On a critical alert when ``on_alert="raise"``.
        """
        if self._closed:
            raise RuntimeError("Monitor.step() was called after close(); create a new Monitor to keep watching")
        step = self.step_count
        if loss is not None:
            self.guard.call("collector loss", self.loss_collector.record, loss, step - self._interval_start)
        self.guard.call("collector activations", self.activations.file_step, step - self._interval_start)
        if val_loss is not None:
            self.log_validation(val_loss)
        new: list[Alert] = []
        if step % self.options.check_every == 0:
            new = self.guard.call("check", self._check, step, default=[])
        if self.weights is not None and (step + 1) % self.options.check_every == 0:
            self.guard.call("collector weights", self.weights.remember_weights)
        self.step_count += 1
        self.activations.sampling = self.step_count % self.options.sample_every == 0
        self._deliver(new)
        return new

    def log_validation(self, loss: torch.Tensor | float) -> None:
        """Reports a validation loss; it appears in the next snapshot (and enables overfitting checks)."""
        self.guard.call("collector loss", self.loss_collector.record_validation, loss)

    def close(self) -> None:
        """Removes every hook, flushes and closes all writers. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for name, collector in self.collectors.items():
            self.guard.call(f"collector {name}", collector.close)
        for sink in self.metric_sinks + self.alert_sinks:
            self.guard.call(f"sink {sink.name}", sink.close)

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Monitor(step={self.step_count}, layers={len(self.facts.layer_types)}, "
                f"alerts={len(self.alerts)}, log_dir={self.log_dir!r})")

    # -- the check: one transfer, then pure host code ----------------------------------------------
    def _check(self, step: int) -> list[Alert]:
        snapshot = Snapshot(step=step)
        states = {name: self.guard.call(f"collector {name}", c.state, default={}) for name, c in self.collectors.items()}
        flat_state = {f"{name}/{key}": value for name, state in states.items() for key, value in state.items()}
        reduced = distributed.reduce_state(flat_state)
        parts: list[tuple[str, str, list[str], torch.Tensor]] = []
        for name, collector in self.collectors.items():
            mine = {key: reduced[f"{name}/{key}"] for key in states[name]}
            for family, layers, values in self.guard.call(f"collector {name}", collector.summarize, mine, default=[]):
                parts.append((name, family, layers, values))
        host = _to_host([values for _, _, _, values in parts])
        per_collector: dict[str, dict[tuple[str, str], float]] = {name: {} for name in self.collectors}
        for (name, family, layers, _), values in zip(parts, host):
            per_collector[name].update(((family, layer), v) for layer, v in zip(layers, values))
        for name, collector in self.collectors.items():
            self.guard.call(f"collector {name}", collector.finish, per_collector[name], snapshot, self._interval_start)
        self._interval_start = step + 1
        if step % self.options.log_every == 0:
            for sink in self.metric_sinks:
                self.guard.call(f"sink {sink.name}", sink.write_snapshot, snapshot)
        self.last_snapshot = snapshot
        return [a for d in self.detectors
                for a in self.guard.call(f"detector {d.kind}", d.check, snapshot, self.facts, default=[])]

    def _deliver(self, alerts: list[Alert]) -> None:
        if not alerts:
            return
        self.alerts.extend(alerts)
        for sink in self.alert_sinks:
            self.guard.call(f"sink {sink.name}", sink.write_alerts, alerts)
        if self._raise_on_critical:
            critical = [a for a in alerts if a.severity == "critical"]
            if critical:
                raise TrainingHealthError(critical[0])

    # -- wiring ------------------------------------------------------------------------------------
    def _build_sinks(self) -> None:
        if self.log_dir is not None and self.rank == 0:
            tensorboard = TensorBoardSink(self.log_dir)
            self.metric_sinks.append(tensorboard)
            self.alert_sinks += [tensorboard, JsonlAlertSink(self.log_dir)]
        for handler in alert_handlers(self.options.on_alert):
            if handler == "log":
                if self.rank == 0:
                    self.alert_sinks.append(LoggingSink())
            elif handler == "warn":
                self.alert_sinks.append(WarningSink())
            elif handler == "raise":
                self._raise_on_critical = True
            else:
                self.alert_sinks.append(CallbackSink(handler))


def _to_host(tensors: list[torch.Tensor]) -> list[list[float]]:
    """Copies many device vectors to the host with ONE transfer (the only sync of a check)."""
    if not tensors:
        return []
    device = tensors[0].device
    flat = torch.cat([t.detach().float().reshape(-1).to(device) for t in tensors]).tolist()
    out, start = [], 0
    for t in tensors:
        out.append(flat[start:start + t.numel()])
        start += t.numel()
    return out


def _writable_dir(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".torchhealth-write-test-"):
            pass
    except OSError as exc:
        raise ValueError(f"log_dir {path!r} cannot be written ({exc.strerror or exc}); "
                         f"pass a writable directory, or log_dir=None to write no files") from exc
    return path

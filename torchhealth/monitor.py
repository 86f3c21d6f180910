"""Monitor: owns the hooks and the schedule; wires collectors -> snapshot -> detectors -> sinks."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
from typing import Any

import torch
from torch import nn

from torchhealth import distributed
from torchhealth.amp import check_scaler
from torchhealth.collectors import Collector, default_collectors
from torchhealth.collectors.base import AttachContext
from torchhealth.detectors import Detector, default_detectors
from torchhealth.detectors.diagnosis import Diagnosis, root_of
from torchhealth.errors import TrainingHealthError
from torchhealth.facts import ModelFacts
from torchhealth.layers import parameter_layers, unwrap
from torchhealth.options import MonitorOptions, alert_handlers
from torchhealth.records import Alert, Snapshot
from torchhealth.safety import Guard
from torchhealth.sinks import CallbackSink, LoggingSink, Sink, WarningSink, default_sinks
from torchhealth.sinks.base import SinkContext
from torchhealth.sinks.webhook import WebhookSink
from torchhealth.transfer import HostCopy

MAX_ALERT_HISTORY = 1000
"""``Monitor.alerts`` keeps the latest this many alerts, so a long run's memory stays flat."""
STATE_VERSION = 1


MAX_FORCED_CHECKS = 3
"""Checks the loss trip-wire may add between two scheduled checks."""


@dataclasses.dataclass
class _Reading:
    """A check whose statistics are on their way to the host (see ``Monitor._start_check``)."""

    snapshot: Snapshot
    logging: bool
    interval_start: int
    collectors: dict[str, Collector]
    keys: list[tuple[str, str]]  # (collector, state name) of each tensor in the copy
    copy: HostCopy


class Monitor:
    """Watches one model's training health.

    Call ``step(loss)`` once per training step, after ``backward()`` and before ``zero_grad()``.
    Statistics accumulate on the device; every ``check_every`` steps they are copied to the host
    in one transfer, written to TensorBoard (every ``log_every`` steps) and checked by the detectors.
    From a GPU the copy runs while training goes on, and the check's alerts arrive one step later
    (from the next ``step()``; ``flush()`` reads them at once), carrying the step they are about.

    Args:
        model: The module to watch (DDP/FSDP wrappers are looked through). Under torch.distributed,
            create the monitor on every rank after wrapping and call ``step`` on every rank: each
            check reduces the statistics across ranks in one collective, and only rank 0 writes
            files (docs/distributed.md). Construction checks that every rank made one, alike
            (RuntimeError naming the ranks that made none, ValueError naming what differs).
        optimizer: Its optimizer; enables measured update/weight ratios and learning-rate advice.
        log_dir: Directory for TensorBoard event files and ``alerts.jsonl``; None writes no files.
        scaler: AMP's ``torch.amp.GradScaler``, when the loop calls ``step`` between
            ``scaler.scale(loss).backward()`` and ``scaler.step(optimizer)``: gradients are then read
            unscaled, and the steps the scaler skips are counted (``Snapshot.skipped_steps``) rather
            than read as non-finite gradients. Needs ``optimizer``. bf16 autocast needs nothing.
        collectors: The statistics to collect, as ``Collector`` instances (``docs/extending.md``);
            None for ``torchhealth.default_collectors()``. A list replaces the defaults: add yours
            with ``[*torchhealth.default_collectors(), MyCollector()]``.
        detectors: The rules, as ``Detector`` instances; None for ``torchhealth.default_detectors()``.
        sinks: Where snapshots and alerts go, as ``Sink`` instances; None for
            ``torchhealth.default_sinks()`` (TensorBoard and ``alerts.jsonl`` under ``log_dir``).
            The ``on_alert`` policies and ``webhook_url`` are added to either.
        **options: See ``MonitorOptions`` (``check_every``, ``log_every``, ``sample_every``,
            ``window_samples``, ``on_alert``, ``strict``, ...).

    Example:
        >>> monitor = torchhealth.Monitor(model, optimizer=opt, log_dir="runs/exp1")
        >>> loss.backward(); monitor.step(loss); opt.step()
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                 log_dir: str | os.PathLike | None = None, scaler: Any = None,
                 collectors: list[Collector] | None = None, detectors: list[Detector] | None = None,
                 sinks: list[Sink] | None = None, **options: Any) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
        if scaler is not None:
            check_scaler(scaler)
            if optimizer is None:
                raise ValueError("scaler= needs the optimizer that the scaler steps: "
                                 "torchhealth.Monitor(model, optimizer, scaler=scaler)")
        self.options = MonitorOptions.from_kwargs(**options)
        collectors = _given_parts("collectors", collectors, Collector, default_collectors)
        detectors = _given_parts("detectors", detectors, Detector, default_detectors)
        sinks = _given_parts("sinks", sinks, Sink, default_sinks)
        self.model = model
        self.optimizer = optimizer
        self.rank, self.world_size = distributed.rank_and_world()
        self.log_dir = _writable_dir(log_dir) if log_dir is not None and self.rank == 0 else (
            os.fspath(log_dir) if log_dir is not None else None)
        self.guard = Guard(self.options.strict, self.rank if self.world_size > 1 else None)
        self.alerts: list[Alert] = []
        self.step_count = 0
        self._interval_start = 0
        self._forced_checks = 0
        # steps from ``_quiet_from`` to before ``_quiet_until`` need only their loss recorded (``_quiet_steps_ahead``);
        # a range of step numbers, not a count: code that sets ``step_count`` (a resumed run) leaves it
        self._quiet_from = self._quiet_until = 0
        self._reading: _Reading | None = None
        self._carried: list[Alert] = []  # alerts state_dict() read early: step() returns (and raises) them next
        self.last_snapshot: Snapshot | None = None
        self._closed = False
        self._attached: list[Any] = []

        inner = unwrap(model)
        params = list(parameter_layers(inner))
        copies = distributed.replica_counts(model, params)
        # before anything that issues a collective (facts of sharded weights) or puts hooks on the model
        distributed.handshake(self._fingerprint(params, copies))
        self.facts = ModelFacts.from_model(inner, optimizer)
        device = params[0][2].device if params else torch.device("cpu")

        self.detectors: list[Detector] = detectors
        self.diagnosis = Diagnosis()  # links each check's alerts to earlier ones that explain them
        self.sinks: list[Sink] = []
        self._raise_on_critical = False
        self._attach_sinks(sinks)
        self.collectors: dict[str, Collector] = {}
        context = AttachContext(inner, model, optimizer, self.options, params, copies, device, self.facts, self.guard,
                                self.world_size, scaler, self.guard.wrap("amp", self._scaler_skipped))
        # last: collectors put hooks on the user's model, and nothing that can still fail may leave them there
        for collector in collectors:
            try:
                if collector.attach(context):
                    self.collectors[collector.name] = collector
            except BaseException:
                for attached in self.collectors.values():
                    self.guard.call(f"collector {attached.name} close", attached.close)
                raise
        self._all_collectors = dict(self.collectors)  # the check schedule, failed parts included (the same on every rank)
        self._failed_parts = 0
        self._wire_collectors()
        # under torch.distributed, what every rank has agreed the reduced state looks like
        self._agreement = distributed.LayoutAgreement(self.guard, self.facts, self._parts,
                                                      self._retire_failed_collectors) if self.world_size > 1 else None
        # delivered by the first step(), so that load_state_dict() can drop those a resumed run already sent
        self._static_alerts = [a for d in self.detectors
                               for a in self.guard.call(f"detector {d.kind}", d.static_check, inner, self.facts,
                                                        default=[])]

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
        if self._quiet_from <= self.step_count < self._quiet_until and val_loss is None and self._quiet_step(loss):
            return []
        self._quiet_until = 0
        if self._closed:
            raise RuntimeError("Monitor.step() was called after close(); create a new Monitor to keep watching")
        if len(self.guard.disabled) != self._failed_parts:
            self._retire_failed_collectors()
        if self._checks_off():  # monitoring has failed and stopped: cost nothing from now on
            self.step_count += 1
            return []
        if self._static_alerts:
            static, self._static_alerts = self._static_alerts, []
            self._deliver(static)
        new: list[Alert] = []
        if self._reading is not None:  # the last check's copy from the GPU: read it now, one step later
            new += self.guard.call("check", self._finish_check, default=[])
        step = self.step_count
        offset = step - self._interval_start
        tripped = False
        for part, collector in self._on_step:
            tripped |= bool(self.guard.call(part, collector.on_step, loss, offset, default=False))
        if val_loss is not None:
            self.log_validation(val_loss)
        scheduled = step % self.options.check_every == 0
        if scheduled:
            self._forced_checks = 0
        # a loss that stays NaN or high must not turn every step into a check
        forced = not scheduled and tripped and self._forced_checks < MAX_FORCED_CHECKS
        self._forced_checks += forced
        if scheduled or forced:
            if "check" in self.guard.disabled:  # failed on this rank only so far: the others learn it now
                self.guard.call("check agreement", self._agreement.reduce,
                                self._scheduled(step % self.options.log_every == 0), {}, {})
            else:
                new += self.guard.call("check", self._check, step, default=[])
        for part, collector in self._after_step:
            self.guard.call(part, collector.after_step, step)
        self.step_count += 1
        self._quiet_from, self._quiet_until = self.step_count, self.step_count + self._quiet_steps_ahead()
        if new:
            self._deliver(new)
        if not self._carried:
            return new
        carried, self._carried = self._carried, []  # already sent to the sinks by state_dict()
        self._raise_critical(carried)
        return carried + new

    def _quiet_step(self, loss: torch.Tensor | float | None) -> bool:
        """Records a step that needs nothing but its loss; False when it needs the full ``step()``."""
        offset = self.step_count - self._interval_start
        try:
            for collector in self._quiet_parts:  # parts that only test first: a False leaves nothing recorded
                if not collector.quiet_step(loss, offset):
                    return False
        except Exception:  # recorded nothing: the full step runs it again under the guard, which reports it
            return False
        self.step_count += 1
        return True

    def _quiet_steps_ahead(self) -> int:
        """How many of the next steps need nothing but their loss recorded.

        No check falls on them, no collector needs its per-step calls (``Collector.idle_steps``: a
        weight copy, a sampled forward, a loss that cannot be recorded quietly), nothing waits (a
        check's copy from the GPU, alerts to deliver) and no part has failed. Most steps are such
        steps, and the training loop waits for each: ``step()`` records them in a few operations
        (``Collector.quiet_step``) instead of walking the whole schedule.
        """
        if self._reading is not None or self._carried or self._static_alerts or self.guard.disabled:
            return 0
        step = self.step_count
        ahead = (-step) % self.options.check_every
        for collector in self._idle_parts:
            ahead = min(ahead, collector.idle_steps(step))
        return ahead

    def log_validation(self, loss: torch.Tensor | float) -> None:
        """Reports a validation loss; it appears in the next snapshot (and enables overfitting checks)."""
        for part, collector in self._parts_named:
            self.guard.call(part, collector.on_validation_loss, loss)

    def flush(self) -> list[Alert]:
        """Reads a check whose statistics are still on their way from the GPU, at once.

        Checks on a GPU are read at the next ``step()``; call this to have ``last_snapshot`` and
        ``alerts`` up to date now (it waits for the copy). Nothing to do on the CPU. Under
        torch.distributed call it on every rank or on none: a rank that reads early also raises early.

        Returns:
            The alerts of that check (usually empty).

        Raises:
            TrainingHealthError: On a critical alert when ``on_alert="raise"``.
        """
        return self._flush(may_raise=True)

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs: the step count, each detector's history and the alerts sent.

        Save it with the model's checkpoint; it holds plain Python values only, so
        ``torch.load(..., weights_only=True)`` reads it back. A check still being read from the
        GPU is read first, so that its history and alerts are in the checkpoint; its alerts are
        still returned (and, with ``on_alert="raise"``, raised) by the next ``step()``, where they
        would have come without the checkpoint: under torch.distributed a checkpoint saved on one
        rank only must not move that rank's raise.
        """
        # saving a checkpoint must not raise; only a pending reading carries alerts, and then no
        # step is quiet (``_quiet_steps_ahead``): the next step() returns them
        self._carried += self._flush(may_raise=False)
        return {
            "version": STATE_VERSION,
            "step": self.step_count,
            "alerts": [alert.to_dict() for alert in self.alerts],
            "detectors": [{"kind": d.kind, "state": self.guard.call(f"detector {d.kind}", d.state_dict, default={})}
                          for d in self.detectors],
            "diagnosis": self.diagnosis.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resumes from ``state_dict()``: step count, detector histories (ongoing episodes) and alert history.

        Call it before the first ``step()`` of the resumed run. Alerts in the history are not sent
        again, static-check alerts included. Detectors are matched by kind in order; a detector the
        checkpoint does not know starts fresh. On-device statistics restart with a new interval.

        Raises:
            ValueError: When ``state`` is not something ``Monitor.state_dict()`` returned.
        """
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION or not isinstance(state.get("step"), int):
            raise ValueError("Monitor.load_state_dict() expects what Monitor.state_dict() returned "
                             f"(a dict with version {STATE_VERSION} and an integer 'step')")
        saved: dict[str, list[dict[str, Any]]] = {}
        for entry in state.get("detectors", []):
            saved.setdefault(entry["kind"], []).append(entry["state"])
        for detector in self.detectors:
            if saved.get(detector.kind):
                self.guard.call(f"detector {detector.kind}", detector.load_state_dict, saved[detector.kind].pop(0))
        self.diagnosis.load_state_dict(state.get("diagnosis", {}))
        self.alerts = [_alert_from_dict(d) for d in state.get("alerts", [])][-MAX_ALERT_HISTORY:]
        sent = {(a.kind, a.layer, a.message) for a in self.alerts}
        self._static_alerts = [a for a in self._static_alerts if (a.kind, a.layer, a.message) not in sent]
        self.start_at(state["step"])

    def start_at(self, step: int) -> None:
        """Counts steps from ``step`` on, with a new check interval (``load_state_dict`` does it too).

        For a run resumed from a checkpoint that holds no monitor state (the Hugging Face Trainer
        resumes its global step): checks, logs and sampled forwards then follow the schedule from
        there. A check still being read from the GPU is dropped.
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"start_at() takes a step number (an int >= 0), got {step!r}")
        self.step_count = self._interval_start = step
        self._reading, self._carried, self._quiet_until = None, [], 0
        for part, collector in self._parts_named:
            self.guard.call(part, collector.reset_interval)
            self.guard.call(part, collector.resume, step)

    # -- driven from outside: torchhealth.watch() and the Lightning / Hugging Face callbacks --------
    def log_loss(self, loss: torch.Tensor | float) -> None:
        """Records a training loss for the current step without ending it (no host synchronization).

        For loops where something else calls ``step`` (``torchhealth.watch`` calls it from the
        optimizer): call it after computing the loss and before ``optimizer.step()``. Calls for
        several micro-batches of one step are averaged.
        """
        offset = self.step_count - self._interval_start
        for part, collector in self._parts_named:
            self.guard.call(part, collector.on_loss, loss, offset)

    def record_skipped_step(self) -> None:
        """Counts an optimizer step that AMP's GradScaler skipped; call it instead of ``step``."""
        self._skipped(recorded=False)

    def _scaler_skipped(self) -> None:
        """After ``scaler.step`` skipped the step that ``step()`` just recorded (``Monitor(scaler=)``)."""
        self._skipped(recorded=True)

    def _skipped(self, recorded: bool) -> None:
        for part, collector in self._parts_named:
            self.guard.call(part, collector.on_skipped_step, recorded)

    def attach(self, driver: Any) -> None:
        """Keeps ``driver`` (anything with ``close()``, e.g. hooks that call ``step``) until ``close``."""
        self._attached.append(driver)

    @property
    def closed(self) -> bool:
        """True after ``close()``."""
        return self._closed

    def close(self) -> None:
        """Removes every hook, flushes and closes all writers. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._quiet_until = 0  # step() must raise from now on
        for driver in self._attached:
            self.guard.call(f"detach {type(driver).__name__}", driver.close)
        static, self._static_alerts = self._static_alerts, []
        self._deliver(static, may_raise=False)  # a monitor closed before its first step still reports them
        self._flush(may_raise=False)
        if self.world_size == 1 and (self.step_count > self._interval_start
                                     or any(c.pending() for c in self.collectors.values())):
            # The steps since the last check (their losses, AMP skips, a late validation loss) are
            # checked and logged once more. Not under torch.distributed: a check is a collective,
            # and a rank closing after an error elsewhere would wait for ranks that are gone.
            final = self.guard.call("check", self._check, max(self.step_count - 1, 0), True, default=[])
            self._deliver(final, may_raise=False)
        for name, collector in self.collectors.items():
            self.guard.call(f"collector {name}", collector.close)
        for sink in self.sinks:
            self.guard.call(f"sink {sink.name}", sink.close)

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Monitor(step={self.step_count}, layers={len(self.facts.layer_types)}, "
                f"alerts={len(self.alerts)}, log_dir={self.log_dir!r})")

    # -- the check: one transfer, then pure host code ----------------------------------------------
    def _check(self, step: int, final: bool = False) -> list[Alert]:
        """Starts a check at ``step``; returns its alerts now, or [] while its copy from a GPU is in flight."""
        self._reading = self._start_check(step, final)
        if self._reading is None:  # checks were switched off on every rank
            return []
        if self._reading.copy.in_flight and not final:
            return []  # read by the next step(): the GPU runs on meanwhile instead of waiting for the host
        return self._finish_check()

    def _scheduled(self, logging: bool) -> list[str]:
        """The collectors a check reads, by name (the same on every rank); ``logging``: it writes TensorBoard."""
        return [name for name, collector in self._all_collectors.items() if collector.reads(logging)]

    def _start_check(self, step: int, final: bool) -> _Reading | None:
        """Device side of a check: raw state, one all-reduce, one copy to the host, reset.

        None when the ranks have just switched checks off (a check failed on one of them).
        """
        logging = step % self.options.log_every == 0 or final
        scheduled = self._scheduled(logging)
        collectors = {name: self.collectors[name] for name in scheduled if name in self.collectors}
        state = {name: self.guard.call(f"collector {name}", c.state, default={}) for name, c in collectors.items()}
        if self._agreement is None:
            reduced = {(name, key): values for name, entries in state.items() for key, (values, _) in entries.items()}
        else:  # the same layout on every rank first (an activation site that only some ranks ran, a failed part)
            reduced = self._agreement.reduce(scheduled, collectors, state)
            if reduced is None:
                return None
            collectors = {name: c for name, c in collectors.items() if name in self.collectors}
        keys = list(reduced)
        copy = HostCopy([reduced[key] for key in keys])
        for name, collector in collectors.items():  # after the copy has been queued: it reads the state
            self.guard.call(f"collector {name}", collector.reset_interval)
        reading = _Reading(Snapshot(step=step), logging, self._interval_start, collectors, keys, copy)
        self._interval_start = step + 1
        return reading

    def _finish_check(self) -> list[Alert]:
        """Host side of the pending check: statistics, snapshot, sinks, detectors."""
        reading, self._reading = self._reading, None
        if reading is None:
            return []
        snapshot = reading.snapshot
        per_collector: dict[str, dict[str, Any]] = {name: {} for name in reading.collectors}
        for (name, key), values in zip(reading.keys, reading.copy.values()):
            per_collector[name][key] = values
        for name, collector in reading.collectors.items():
            self.guard.call(f"collector {name}", collector.finish, per_collector[name], snapshot, reading.interval_start)
        if reading.logging:
            for sink in self.sinks:
                self.guard.call(f"sink {sink.name}", sink.write_snapshot, snapshot)
        self.last_snapshot = snapshot
        alerts = [a for d in self.detectors
                  for a in self.guard.call(f"detector {d.kind}", d.check, snapshot, self.facts, default=[])]
        return self.guard.call("diagnosis", self.diagnosis.link, alerts, snapshot, self.facts, self.detectors,
                               default=alerts)

    def _flush(self, *, may_raise: bool) -> list[Alert]:
        if self._reading is None:
            return []
        alerts = self.guard.call("check", self._finish_check, default=[])
        self._deliver(alerts, may_raise=may_raise)
        return alerts

    def _deliver(self, alerts: list[Alert], *, may_raise: bool = True) -> None:
        if not alerts:
            return
        self.alerts.extend(alerts)
        del self.alerts[:-MAX_ALERT_HISTORY]
        for sink in self.sinks:
            self.guard.call(f"sink {sink.name}", sink.write_alerts, alerts)
        if may_raise:
            self._raise_critical(alerts)

    def _raise_critical(self, alerts: list[Alert]) -> None:
        """Raises on the first critical alert of ``alerts`` when ``on_alert="raise"``, naming its root cause.

        A consequence never raises on its own: a critical consequence of a critical root raised with
        the root; one of a warning raises naming that root (the root got worse).
        """
        if self._raise_on_critical:
            for alert in alerts:
                root = root_of(alert, self.alerts) if alert.severity == "critical" else None
                if root is not None and (root is alert or root.severity != "critical"):
                    raise TrainingHealthError(root)

    def _retire_failed_collectors(self) -> None:
        """Removes the hooks of collectors the guard switched off, so a failed part costs nothing.

        Runs at the start of ``step()``, never inside a hook: closing mid-forward could pop the wrong
        function mode.
        """
        self._failed_parts = len(self.guard.disabled)
        checks_off = self._checks_off()  # nothing would ever read the collectors again
        if checks_off:
            self._reading = None
        for name, collector in list(self.collectors.items()):
            if any(part in self.guard.disabled for part in self._parts(name, checks_off)):
                del self.collectors[name]
                self.guard.call(f"collector {name} close", collector.close)
        self._wire_collectors()

    def _wire_collectors(self) -> None:
        """Lists, once, which collectors take which per-step call (the base class's calls do nothing)."""
        named = [(f"collector {name}", c) for name, c in self.collectors.items()]
        self._parts_named = named
        self._on_step = [(part, c) for part, c in named if type(c).on_step is not Collector.on_step]
        self._after_step = [(part, c) for part, c in named if type(c).after_step is not Collector.after_step]
        self._idle_parts = [c for _, c in named if type(c).idle_steps is not Collector.idle_steps]
        self._quiet_parts = sorted((c for _, c in named if type(c).quiet_step is not Collector.quiet_step),
                                   key=lambda c: c.records_quiet_steps)

    def _parts(self, name: str, checks: bool = True) -> list[str]:
        """The guarded parts whose failure switches collector ``name`` off (``checks``: "check" too)."""
        return [f"collector {name}", *self._all_collectors[name].parts] + (["check"] if checks else [])

    def _checks_off(self) -> bool:
        """Whether checks have failed and stopped. Under torch.distributed only once every rank knows:
        a rank whose check failed still joins the next check's collective, to tell the others."""
        if "check" not in self.guard.disabled:
            return False
        agreement = self._agreement
        return agreement is None or "check" in agreement.off or "check agreement" in self.guard.disabled

    def _fingerprint(self, params: list[tuple[str, str, torch.Tensor]], copies: list[float]) -> dict[str, Any]:
        """What must be alike on every rank (``distributed.handshake``): the options that set the
        schedule and the layout of the reduced state, the parameters and how many ranks hold each,
        and the optimizer."""
        options = self.options
        names = "\n".join(name for name, _, _ in params)
        return {
            "check_every": options.check_every, "log_every": options.log_every, "sample_every": options.sample_every,
            "window_samples": options.window_samples, "strict": options.strict,
            "functional_activations": options.functional_activations, "per_parameter": options.per_parameter,
            "on_alert raises": "raise" in [h for h in alert_handlers(options.on_alert) if isinstance(h, str)],
            "parameters": f"{len(params)} tensors, names {hashlib.sha1(names.encode()).hexdigest()[:12]}",
            "ranks holding each parameter": hashlib.sha1(repr(copies).encode()).hexdigest()[:12],
            "optimizer": type(self.optimizer).__name__ if self.optimizer is not None else None,
        }

    # -- wiring ------------------------------------------------------------------------------------
    def _attach_sinks(self, sinks: list[Sink]) -> None:
        """The given sinks that apply here (TensorBoard and JSONL only with a ``log_dir``, on rank 0),
        then the ``on_alert`` policies and the webhook."""
        context = SinkContext(self.log_dir, self.rank, self.world_size, self.options)
        self.sinks = [sink for sink in sinks if sink.attach(context)]
        for index, handler in enumerate(alert_handlers(self.options.on_alert)):
            if handler == "log":
                if self.rank == 0:
                    self.sinks.append(LoggingSink())
            elif handler == "warn":
                if self.rank == 0:
                    self.sinks.append(WarningSink())
            elif handler == "raise":
                self._raise_on_critical = True
            else:
                self.sinks.append(CallbackSink(handler, index))
        if self.options.webhook_url is not None and self.rank == 0:
            self.sinks.append(WebhookSink(self.options.webhook_url, log_dir=self.log_dir))


def _alert_from_dict(record: dict[str, Any]) -> Alert:
    """Rebuilds an alert from ``Alert.to_dict()`` output (which wrote non-finite numbers as strings)."""
    fields = {f.name for f in dataclasses.fields(Alert)}
    return Alert(**{**{k: v for k, v in record.items() if k in fields}, "value": float(record["value"])})


def _writable_dir(path: str | os.PathLike) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"log_dir must be a path (str or os.PathLike) or None, got {type(path).__name__}")
    path = os.fspath(path)
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".torchhealth-write-test-"):
            pass
    except OSError as exc:
        raise ValueError(f"log_dir {path!r} cannot be written ({exc.strerror or exc}); "
                         f"pass a writable directory, or log_dir=None to write no files") from exc
    return path


def _given_parts(what: str, given: Any, kind: type, defaults: Any) -> list[Any]:
    """``given`` as a list of ``kind`` instances (``defaults()`` when None); TypeError naming the fix otherwise."""
    if given is None:
        return list(defaults())
    if isinstance(given, kind) or not isinstance(given, (list, tuple)):
        raise TypeError(f"{what}= takes a list of torchhealth.{kind.__name__} instances, got {type(given).__name__}; "
                        f"to add one to the defaults pass [*torchhealth.default_{what}(), yours]")
    wrong = [type(item).__name__ for item in given if not isinstance(item, kind)]
    if wrong:
        raise TypeError(f"{what}= takes torchhealth.{kind.__name__} instances (subclass it), got {', '.join(wrong)}")
    if kind is Collector:
        names = [item.name for item in given]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"collectors= has more than one collector named {twice}: give each its own ``name``")
    return list(given)

"""Monitor options: one validated record, so bad configuration fails at construction."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union

ALERT_POLICIES = ("log", "warn", "raise")
MAX_INTERVAL = 100_000
"""Largest ``check_every``/``log_every``/``sample_every``: per-step flags are kept on the device for one interval."""
AlertHandler = Union[str, Callable[..., Any]]


@dataclass(frozen=True)
class MonitorOptions:
    """Every knob of a Monitor, with its default.

    Attributes:
        check_every: Read statistics to the host and run the detectors every this many steps.
        log_every: Write TensorBoard scalars every this many steps (a multiple of ``check_every``).
        sample_every: Collect activation statistics on every this many forward passes.
        window_samples: Samples a per-unit activity window must see before units are judged dead.
        on_alert: ``"log"``, ``"warn"``, ``"raise"``, a callable taking an Alert, or a list of these.
        strict: Re-raise internal monitor errors instead of switching the failing part off.
        functional_activations: Also watch ``F.relu``/``torch.sigmoid``/... called inside ``forward``.
        per_parameter: Also report each parameter's gradient norm (``param_grad_norm``).
        webhook_url: POST each alert as JSON to this URL (never blocks training).
    """

    check_every: int = 10
    log_every: int = 100
    sample_every: int = 10
    window_samples: int = 1024
    on_alert: Any = "log"
    strict: bool = False
    functional_activations: bool = True
    per_parameter: bool = True
    webhook_url: str | None = None

    def __post_init__(self) -> None:
        for name in ("check_every", "log_every", "sample_every", "window_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"option {name!r} must be a positive integer, got {value!r}")
            if name != "window_samples" and value > MAX_INTERVAL:
                raise ValueError(f"option {name!r} must be between 1 and {MAX_INTERVAL} steps, got {value!r}")
        if self.log_every % self.check_every:
            raise ValueError(
                f"option 'log_every' ({self.log_every}) must be a multiple of 'check_every' "
                f"({self.check_every}): statistics are read from the device only on check steps")
        for name in ("strict", "functional_activations", "per_parameter"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"option {name!r} must be True or False, got {getattr(self, name)!r}")
        alert_handlers(self.on_alert)  # validates
        if self.webhook_url is not None and not (
                isinstance(self.webhook_url, str) and self.webhook_url.startswith(("http://", "https://"))):
            raise ValueError(f"option 'webhook_url' must be an http:// or https:// URL, got {self.webhook_url!r}")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "MonitorOptions":
        """Builds options from keyword arguments, rejecting unknown names with a close match."""
        known = [f.name for f in dataclasses.fields(cls)]
        for name in kwargs:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise TypeError(f"unknown torchhealth option {name!r}.{hint} Valid options: {', '.join(known)}")
        return cls(**kwargs)


def alert_handlers(on_alert: Any) -> list[AlertHandler]:
    """Normalises ``on_alert`` to a list of policies/callables, raising ValueError when invalid."""
    items: Sequence[Any] = on_alert if isinstance(on_alert, (list, tuple)) else [on_alert]
    if not items:
        raise ValueError("option 'on_alert' must not be an empty list; use 'log' to only log alerts")
    for item in items:
        if not (callable(item) or (isinstance(item, str) and item in ALERT_POLICIES)):
            close = difflib.get_close_matches(item, ALERT_POLICIES, n=1) if isinstance(item, str) else []
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"option 'on_alert' must be one of {ALERT_POLICIES}, a callable taking an Alert, "
                f"or a list of these; got {item!r}.{hint}")
    return list(items)

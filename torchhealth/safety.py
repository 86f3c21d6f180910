"""Fault isolation: a failing part of the monitor is switched off, training goes on."""

from __future__ import annotations

import logging
from typing import Any, Callable, TypeVar

logger = logging.getLogger("torchhealth")
T = TypeVar("T")


class Guard:
    """Runs monitor parts so that their exceptions never reach the training loop.

    The first exception of a part is logged with its traceback and the part is switched off;
    later calls to it return the default at once. With ``strict=True`` exceptions propagate.
    ``errors`` keeps each failed part's exception as one line (``"ValueError: ..."``): under
    torch.distributed the monitor tells the other ranks, which switch the part off too.
    """

    def __init__(self, strict: bool = False, rank: int | None = None) -> None:
        """``rank``: this process's rank under torch.distributed (named in the log), else None."""
        self.strict = strict
        self.rank = rank
        self.disabled: set[str] = set()
        self.errors: dict[str, str] = {}

    def call(self, part: str, fn: Callable[..., T], *args: Any, default: T = None, **kwargs: Any) -> T:  # type: ignore[assignment]
        """Calls ``fn(*args, **kwargs)`` as part ``part``; returns ``default`` if the part is off or fails."""
        if part in self.disabled:
            return default
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if self.strict:
                raise
            self.disabled.add(part)
            self.errors[part] = f"{type(exc).__name__}: {exc}"
            if self.rank is None:
                logger.exception("torchhealth: %s failed and is switched off; training continues", part)
            else:
                logger.exception("torchhealth: %s failed on rank %d and is switched off; every rank switches it "
                                 "off at the next check; training continues", part, self.rank)
            return default

    def wrap(self, part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Returns ``fn`` guarded as part ``part`` (for hooks)."""
        def guarded(*args: Any, **kwargs: Any) -> Any:
            return self.call(part, fn, *args, **kwargs)
        return guarded

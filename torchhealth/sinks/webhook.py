"""Alerts to a webhook: one JSON POST per alert, sent from a background thread.

Training never waits on the network: alerts go into a bounded queue that a daemon thread drains.
A full queue drops the alert; a timeout, refusal or non-2xx answer is logged (the first of each
kind at WARNING, later ones at DEBUG) and the alert is dropped. ``close`` drains with a deadline.
"""

from __future__ import annotations

import json
import logging
import queue
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from torchhealth.records import Alert
from torchhealth.sinks.base import Sink

logger = logging.getLogger("torchhealth")
_STOP = object()
_SOURCE = "torchhealth"


def webhook_payload(alert: Alert, log_dir: str | None = None) -> dict[str, Any]:
    """The JSON object POSTed for one alert.

    The alert's fields (``Alert.to_dict``), plus ``text`` (the alert as one readable message, which
    chat webhooks such as Slack's or Mattermost's display as is), ``source`` and ``log_dir``.
    """
    return {"text": str(alert), **alert.to_dict(), "source": _SOURCE, "log_dir": log_dir}


class WebhookSink(Sink):
    """POSTs each alert as JSON to ``url`` without ever blocking or failing the training loop.

    Args:
        url: An ``http://`` or ``https://`` URL.
        timeout: Seconds one request may take before it is abandoned.
        max_queued: Alerts waiting to be sent at most; more are dropped (and that is logged).
        close_deadline: Seconds ``close`` waits for queued alerts to be sent.
        log_dir: The run's log directory, sent with each alert so receivers can find the run.
    """

    name = "webhook"

    def __init__(self, url: str, *, timeout: float = 5.0, max_queued: int = 256,
                 close_deadline: float = 10.0, log_dir: str | None = None) -> None:
        self.url = url
        self.timeout = timeout
        self.close_deadline = close_deadline
        self.log_dir = log_dir
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queued)
        self._thread: threading.Thread | None = None
        self._closed = False
        self._reported: set[str] = set()

    def write_alerts(self, alerts: list[Alert]) -> None:
        if self._closed:
            return
        self._start()
        for alert in alerts:
            try:
                self._queue.put_nowait(webhook_payload(alert, self.log_dir))
            except queue.Full:
                self.dropped += 1
                self._report("queue_full", "torchhealth: webhook queue is full (%d alerts waiting); dropping alerts",
                             self._queue.maxsize)

    def flush(self, timeout: float | None = None) -> bool:
        """Waits until every queued alert was sent or abandoned, at most ``timeout`` seconds.

        Returns:
            True when the queue was drained in time.
        """
        deadline = time.monotonic() + (self.close_deadline if timeout is None else timeout)
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._queue.all_tasks_done.wait(left)
        return True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._thread is None:
            return
        drained = self.flush()
        try:
            self._queue.put_nowait(_STOP)
        except queue.Full:
            pass
        self._thread.join(timeout=0.5)
        if not drained:
            logger.warning("torchhealth: webhook %s: %d alerts were not delivered before the %.0f s close deadline",
                           self.url, self._queue.qsize(), self.close_deadline)

    # -- the sending thread -------------------------------------------------------------------
    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="torchhealth-webhook", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            payload = self._queue.get()
            try:
                if payload is _STOP:
                    return
                self._send(payload)
            finally:
                self._queue.task_done()

    def _send(self, payload: dict[str, Any]) -> None:
        try:  # encoding too: nothing may end the sending thread
            body = json.dumps(payload, allow_nan=False).encode("utf-8")
            request = urllib.request.Request(self.url, data=body, method="POST",
                                             headers={"Content-Type": "application/json", "User-Agent": _SOURCE})
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
            self.sent += 1
        except urllib.error.HTTPError as exc:
            self.failed += 1
            self._report(f"http {exc.code}", "torchhealth: webhook %s answered HTTP %d; alert dropped", self.url, exc.code)
        except Exception as exc:  # the network must never reach the training loop
            self.failed += 1
            if isinstance(exc, (socket.timeout, TimeoutError)) or isinstance(getattr(exc, "reason", None), TimeoutError):
                self._report("timeout", "torchhealth: webhook %s did not answer within %.1f s; alert dropped",
                             self.url, self.timeout)
            else:
                self._report(type(exc).__name__, "torchhealth: webhook %s failed (%s); alert dropped", self.url, exc)

    def _report(self, kind: str, message: str, *args: Any) -> None:
        """Logs the first failure of each kind at WARNING, later ones at DEBUG (no log flood)."""
        first = kind not in self._reported
        self._reported.add(kind)
        logger.log(logging.WARNING if first else logging.DEBUG, message + ("" if first else " (again)"), *args)

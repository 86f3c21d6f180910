"""WebhookSink against real local HTTP servers: one that works, one that hangs, one that fails."""

from __future__ import annotations

import http.server
import json
import logging
import threading
import time
from contextlib import contextmanager

import pytest
import torch
from torch import nn

import torchhealth
from torchhealth.records import Alert
from torchhealth.sinks.webhook import WebhookSink


def alert(step: int = 3) -> Alert:
    return Alert(kind="exploding_gradient", layer="fc1", step=step, severity="critical", value=float("inf"),
                 message="gradient norm is inf", suggestions=["lower the learning rate"])


@contextmanager
def server(behaviour: str):
    received: list[dict] = []
    release = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if behaviour == "hang":
                release.wait(10)
                return
            if behaviour == "fail":
                self.send_error(500)
                return
            received.append(json.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/hook", received
    finally:
        release.set()
        httpd.shutdown()
        httpd.server_close()


def test_posts_one_json_object_per_alert():
    with server("ok") as (url, received):
        sink = WebhookSink(url, log_dir="runs/x")
        sink.write_alerts([alert(1), alert(2)])
        sink.close()
    assert [r["step"] for r in received] == [1, 2]
    first = received[0]
    assert first["kind"] == "exploding_gradient" and first["layer"] == "fc1" and first["severity"] == "critical"
    assert first["value"] == "inf"  # JSON has no inf
    assert first["suggestions"] == ["lower the learning rate"]
    assert "CRITICAL exploding_gradient [fc1]" in first["text"]
    assert first["log_dir"] == "runs/x" and first["source"] == "torchhealth"
    assert sink.sent == 2 and sink.failed == 0


def test_hanging_server_never_blocks_training_and_close_keeps_its_deadline(caplog):
    with server("hang") as (url, _):
        sink = WebhookSink(url, timeout=0.5, close_deadline=1.0)
        start = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="torchhealth"):
            for step in range(5):
                sink.write_alerts([alert(step)])
            queued_in = time.monotonic() - start
            sink.close()
        closed_in = time.monotonic() - start
    assert queued_in < 0.2
    assert closed_in < 3.0
    timeouts = [r for r in caplog.records if "did not answer" in r.getMessage()]
    assert len(timeouts) == 1  # logged once, not once per alert
    assert sink.sent == 0 and sink.failed >= 1


def test_server_error_is_logged_once(caplog):
    with server("fail") as (url, _):
        sink = WebhookSink(url, timeout=2.0)
        with caplog.at_level(logging.WARNING, logger="torchhealth"):
            sink.write_alerts([alert(1), alert(2), alert(3)])
            assert sink.flush(timeout=5.0)
        sink.close()
    assert sink.failed == 3
    assert [r.getMessage() for r in caplog.records if "HTTP 500" in r.getMessage()] != []
    assert len([r for r in caplog.records if "HTTP 500" in r.getMessage()]) == 1


def test_unreachable_url_and_full_queue_are_dropped_not_raised(caplog):
    sink = WebhookSink("http://127.0.0.1:9/nothing", timeout=0.5, max_queued=2, close_deadline=2.0)
    with caplog.at_level(logging.WARNING, logger="torchhealth"):
        sink.write_alerts([alert(i) for i in range(50)])
        sink.close()
    assert sink.dropped > 0
    assert sink.sent == 0
    assert any("queue is full" in r.getMessage() for r in caplog.records)


def test_monitor_option_webhook_url_delivers_alerts():
    class AlwaysWarns(torchhealth.detectors.Detector):
        kind = "test_detector"

        def check(self, snapshot, facts):
            return [Alert(kind=self.kind, layer=None, step=snapshot.step, severity="warning", value=1.0,
                          message="seen")]

    with server("ok") as (url, received):
        model = nn.Linear(3, 1)
        monitor = torchhealth.Monitor(model, check_every=2, log_every=2, webhook_url=url, on_alert=[lambda a: None])
        monitor.detectors.append(AlwaysWarns())
        for _ in range(4):
            model(torch.randn(2, 3)).sum().backward()
            monitor.step()
        monitor.close()
    assert [r["step"] for r in received] == [0, 2, 3]  # checks at 0 and 2; close() checks step 3
    assert all(r["kind"] == "test_detector" for r in received)


def test_bad_webhook_url_is_a_clear_error():
    with pytest.raises(ValueError, match="webhook_url"):
        torchhealth.Monitor(nn.Linear(2, 2), webhook_url="ftp://example")

"""Starts the real TensorBoard server on loopback for tests and the README screenshot."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from typing import Any, Iterator

import torchhealth

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(torchhealth.__file__)))


class ServerUnavailable(RuntimeError):
    """TensorBoard's server could not be started here."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(base: str, path: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(base + path, timeout=timeout) as response:
        return json.loads(response.read())


@contextmanager
def tensorboard_server(logdir: str, wait_for_run: str | None = None, timeout: float = 90.0) -> Iterator[str]:
    """Yields the base URL of a TensorBoard serving ``logdir``; always kills it afterwards.

    Raises:
        ServerUnavailable: When the server does not answer within ``timeout`` seconds.
    """
    port = free_port()
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", logdir, "--host", "127.0.0.1", "--port", str(port),
           "--load_fast=false", "--reload_interval", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise ServerUnavailable(f"tensorboard exited with {proc.returncode}: {proc.stdout.read()[-2000:]}")
            try:
                runs = get_json(base, "/data/runs", timeout=2.0)
                if wait_for_run is None or wait_for_run in runs:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                pass
            if time.monotonic() > deadline:
                raise ServerUnavailable(f"tensorboard did not serve run {wait_for_run!r} within {timeout:.0f} s")
            time.sleep(0.5)
        yield base
    finally:
        proc.kill()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()

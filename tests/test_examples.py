"""The examples run as written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import torchhealth

REPO = Path(torchhealth.__file__).resolve().parent.parent


def run_example(script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(REPO / "examples" / script), *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_quickstart_trains_writes_tensorboard_and_reports(tmp_path):
    pytest.importorskip("sklearn")
    done = run_example("quickstart.py", "--logdir", str(tmp_path), "--steps", "40")
    assert done.returncode == 0, done.stderr
    assert "== healthy" in done.stdout and "== lr_too_high" in done.stdout
    assert f"tensorboard --logdir {tmp_path}" in done.stdout
    for run in ("healthy", "lr_too_high"):
        assert any(p.name.startswith("events") for p in (tmp_path / run).iterdir())

"""The examples run as written."""

from __future__ import annotations

import json
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


def test_custom_statistic_logs_a_new_family_and_its_rule_alerts(tmp_path):
    from tests.helpers import scalar_tags

    done = run_example("custom_statistic.py", "--logdir", str(tmp_path), "--steps", "200")
    assert done.returncode == 0, done.stderr
    assert "WARNING noisy_gradients [0]" in done.stdout and "Raise the batch size" in done.stdout
    assert {"health/gradient_snr/0", "health/gradient_snr/2"} <= scalar_tags(str(tmp_path))
    report = subprocess.run([sys.executable, "-m", "torchhealth.cli", "report", str(tmp_path), "--json"],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    layers = json.loads(report.stdout)["runs"][0]["layers"]
    assert set(layers["0"]["other"]) == {"gradient_snr"} and layers["0"]["other"]["gradient_snr"] > 0


def test_custom_detector_and_sink_run_beside_the_defaults(tmp_path):
    done = run_example("custom_detector.py", "--logdir", str(tmp_path), "--steps", "200")
    assert done.returncode == 0, done.stderr
    assert "CRITICAL missed_loss_target at step 100" in done.stdout
    rows = (tmp_path / "alerts.csv").read_text().splitlines()
    assert rows[0] == "step,severity,kind,layer,message" and rows[1].startswith("100,critical,missed_loss_target,,")
    # the defaults stayed: the dashboard and alerts.jsonl hold the same alerts
    assert any(p.name.startswith("events.out.tfevents.") for p in tmp_path.iterdir())
    jsonl = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert [(a["step"], a["kind"]) for a in jsonl] == [(int(r.split(",")[0]), r.split(",")[2]) for r in rows[1:]]

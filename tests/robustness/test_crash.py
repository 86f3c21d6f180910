"""Crash safety: what a killed training process wrote is intact and readable."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

import torchhealth
from robustness_helpers import Net, alert_texts, read_alerts, read_events, train

TRAINING = textwrap.dedent("""
    import sys
    import torch
    import torchhealth.monitor
    from robustness_helpers import HighLossDetector, Net

    class Early(HighLossDetector):
        kind = "test_early_warning"

    torchhealth.monitor.default_detectors = lambda: [
        Early(limit=float(sys.argv[2]) / 2), HighLossDetector(limit=float(sys.argv[2]), severity="critical")]
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    monitor = torchhealth.Monitor(model, optimizer=optimizer, log_dir=sys.argv[1], check_every=5, log_every=5)
    scale = 0.0
    while True:  # runs until killed
        loss = (model(torch.randn(8, 4)) * scale).pow(2).mean()
        loss.backward()
        if any(a.severity == "critical" for a in monitor.step(loss)):
            print("ALERTED", monitor.step_count - 1, flush=True)
        optimizer.zero_grad()
        scale = 1.0 if monitor.step_count > 40 else 0.0
""")


def child_env() -> dict[str, str]:
    """PYTHONPATH with the tree under test first, then these tests' helpers."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(torchhealth.__file__)))
    here = os.path.dirname(os.path.abspath(__file__))
    return {**os.environ, "PYTHONPATH": os.pathsep.join([root, here, os.environ.get("PYTHONPATH", "")])}


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_after_a_critical_alert_leaves_readable_files(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", TRAINING, str(tmp_path), "1e-4"], env=child_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()  # blocks until the critical alert was delivered
        assert line.startswith("ALERTED"), process.stderr.read()
        alert_step = int(line.split()[1])
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL

    alerts = read_alerts(str(tmp_path))  # every line parses
    assert [(a["kind"], a["severity"], a["step"]) for a in alerts] == [
        ("test_early_warning", "warning", alert_step), ("test_high_loss", "critical", alert_step)]

    events = read_events(str(tmp_path))
    texts = alert_texts(events)
    assert any("test_high_loss" in t for t in texts), "a critical alert reaches the event file at once"
    logged = [e.step for e in events.Scalars("health/loss")]
    assert logged[: alert_step // 5 + 1] == list(range(0, alert_step + 1, 5)), "scalars up to the alert survive"


def test_event_file_cut_mid_record_stays_readable(with_detectors, tmp_path):
    """A kill during a write leaves a torn last record; TensorBoard's reader keeps what came before."""
    with_detectors()
    model = Net()
    monitor = torchhealth.Monitor(model, log_dir=tmp_path / "run", check_every=1, log_every=1)
    train(monitor, model, None, steps=20)
    monitor.close()
    (event_file,) = [f for f in os.listdir(tmp_path / "run") if f.startswith("events")]
    whole = os.path.getsize(tmp_path / "run" / event_file)
    (tmp_path / "cut").mkdir()
    shutil.copy(tmp_path / "run" / event_file, tmp_path / "cut" / event_file)
    with open(tmp_path / "cut" / event_file, "r+b") as f:
        f.truncate(whole - 7)
    steps = [e.step for e in read_events(str(tmp_path / "cut")).Scalars("health/loss")]
    assert steps == list(range(len(steps))) and len(steps) >= 19

"""The benchmark scripts the README and docs/performance.md quote still run and report what they promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_overhead_reports_wall_clock_and_cpu_time_per_model_and_per_kind_of_step(tmp_path):
    out = tmp_path / "overhead.md"
    _run("benchmarks/overhead.py", "--models", "mlp16", "--arms", "plain,torchhealth", "--rounds", "10",
         "--warmup", "0", "--out", str(out))
    text = out.read_text()
    assert "**wall-clock overhead**" in text and "CPU-time overhead" in text
    rows = [line for line in text.splitlines() if line.startswith("| MLP 16x256 ReLU, batch 64 |")]
    assert [row.split("|")[3].strip() for row in rows] == ["plain", "torchhealth"]
    assert rows[1].split("|")[5].strip().endswith("%") and rows[1].split("|")[8].strip().endswith("%")
    kinds = [line.split("|")[1].strip() for line in text.split("the monitor's steps by kind")[1].splitlines()
             if line.startswith("| ") and not line.startswith("| kind")]
    assert kinds and set(kinds) == {"check", "after check", "other", "before log", "log"}


def test_gil_contention_reports_every_arm():
    text = _run("benchmarks/gil_contention.py", "--steps", "20", "--job-ms", "0.5")
    arms = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ") and "arm" not in line]
    assert arms == ["alone", "python job at backward", "GIL-free job at backward", "python job at step end",
                    "GIL-free job at step end"]

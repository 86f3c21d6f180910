"""The torchhealth command: demo over the real built-in scenarios (shortened), report, --version."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import redirect_stdout
from io import StringIO

import pytest

import torchhealth
import torchhealth_scenarios
from torchhealth import cli

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(torchhealth.__file__)))


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """A shortened demo: a healthy run and one whose loss goes NaN (the real scenarios)."""
    logdir = str(tmp_path_factory.mktemp("demo"))
    out = StringIO()
    with redirect_stdout(out):
        code = cli.main(["demo", "--scenario", "healthy", "--scenario", "nonfinite", "--steps", "30", "--logdir", logdir])
    return code, out.getvalue(), logdir


def test_demo_prints_alerts_with_suggestions_and_how_to_open_tensorboard(demo_run):
    code, out, logdir = demo_run
    assert code == 0
    assert "CRITICAL nonfinite" in out
    assert "1. " in out.split("CRITICAL nonfinite", 1)[1]  # its suggestions follow it
    assert "no alerts in 30 steps" in out  # the healthy run
    assert f"tensorboard --logdir {logdir}" in out
    assert sorted(os.listdir(logdir)) == ["healthy", "nonfinite"]
    assert os.path.exists(os.path.join(logdir, "nonfinite", "alerts.jsonl"))
    assert not os.path.exists(os.path.join(logdir, "healthy", "alerts.jsonl"))


def test_demo_rejects_unknown_scenarios_and_lists_them(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "demo", "--scenario", "nope", "--logdir", str(tmp_path))
    assert code == 2 and "unknown scenario 'nope'" in out and "healthy" in out
    assert os.listdir(tmp_path) == []
    code, out, _ = run_cli(capsys, "demo", "--scenario", "list")
    assert code == 0 and all(name in out for name in torchhealth_scenarios.DEMO_SCENARIOS)


def test_demo_names_a_missing_optional_package(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # as if scikit-learn were not installed
    monkeypatch.delitem(sys.modules, "sklearn.datasets", raising=False)
    code, out, _ = run_cli(capsys, "demo", "--scenario", "healthy", "--steps", "2", "--logdir", str(tmp_path))
    assert code == 1 and "pip install scikit-learn" in out


def test_report_table_reads_back_what_the_demo_wrote(demo_run, capsys):
    _, _, logdir = demo_run
    code, out, _ = run_cli(capsys, "report", logdir)
    assert code == 0
    assert "grad norm" in out and "update ratio" in out and "dead units" in out
    assert "CRITICAL nonfinite" in out and "no alerts" in out
    assert "Diagnosis: 1 root cause" in out and "Fixes, most promising first:" in out


def test_report_json(demo_run, capsys):
    _, _, logdir = demo_run
    code, out, _ = run_cli(capsys, "report", logdir, "--json")
    assert code == 0
    runs = {os.path.basename(r["run_dir"]): r for r in json.loads(out)["runs"]}
    assert set(runs) == {"healthy", "nonfinite"}
    healthy = runs["healthy"]
    assert healthy["alerts"] == [] and healthy["last_step"] == 29  # checks at 0, 10, 20; close() checks 29
    assert "total" in healthy["layers"] and len(healthy["layers"]) > 2
    for name, layer in healthy["layers"].items():
        assert layer["grad_norm_min"] <= layer["grad_norm"] <= layer["grad_norm_max"], name
    assert any((layer["update_ratio"] or 0) > 0 for layer in healthy["layers"].values())
    alerts = runs["nonfinite"]["alerts"]
    assert alerts[0]["kind"] == "nonfinite" and alerts[0]["suggestions"]
    diagnosis = runs["nonfinite"]["diagnosis"]
    assert [r["alert"]["kind"] for r in diagnosis["roots"]] == ["nonfinite"] and diagnosis["fixes"]
    assert runs["healthy"]["diagnosis"] == {"roots": [], "fixes": [], "advisories": []}


def test_report_on_a_directory_without_a_run_is_a_clear_error(tmp_path, capsys):
    code, _, err = run_cli(capsys, "report", str(tmp_path))
    assert code == 2 and "no torchhealth run" in err
    code, _, err = run_cli(capsys, "report", str(tmp_path / "missing"))
    assert code == 2 and "not a directory" in err


def test_console_script_version():
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    out = subprocess.run([sys.executable, "-m", "torchhealth.cli", "--version"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"torchhealth {torchhealth.__version__}"

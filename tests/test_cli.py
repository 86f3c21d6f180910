"""The torchhealth command: demo (against a stand-in scenarios module), report, --version."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from dataclasses import dataclass
from typing import Any, Callable

import pytest
import torch
from torch import nn

import torchhealth
import torchhealth.monitor
from torchhealth import cli

from tests.helpers import NonfiniteIsCritical

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(torchhealth.__file__)))


# -- a stand-in for torchhealth.scenarios, following its contract (tests only) ------------------------
@dataclass(frozen=True)
class StandInScenario:
    name: str
    description: str
    expected: tuple
    steps: int
    build: Callable[[int], Any]


@dataclass
class StandInResult:
    scenario: Any
    alerts: list
    first_nonfinite_step: Any
    steps_run: int
    monitor: Any = None


def _stand_in_run(scenario, *, steps=None, seed=0, log_dir=None, on_step=None, **monitor_options):
    torch.manual_seed(seed)
    model, lr = scenario.build(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    monitor = torchhealth.Monitor(model, opt, log_dir=log_dir, check_every=2, log_every=2, **monitor_options)
    monitor.detectors.append(NonfiniteIsCritical())
    first_nonfinite, step = None, 0
    for step in range(steps or scenario.steps):
        x = torch.randn(16, 4)
        loss = nn.functional.mse_loss(model(x), x.sum(1, keepdim=True) * 3)
        loss.backward()
        new = monitor.step(loss)
        opt.step()
        opt.zero_grad()
        if not torch.isfinite(loss) and first_nonfinite is None:
            first_nonfinite = step
        if on_step:
            on_step(step, float(loss.detach()), new)
    monitor.close()
    return StandInResult(scenario, list(monitor.alerts), first_nonfinite, step + 1, monitor)


def _mlp(seed):
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))


@pytest.fixture
def scenarios(monkeypatch):
    module = types.ModuleType("torchhealth.scenarios")
    module.SCENARIOS = {
        "healthy": StandInScenario("healthy", "a small MLP that trains", (), 8, lambda s: (_mlp(s), 0.01)),
        "diverging": StandInScenario("diverging", "learning rate far too high", ("test_nonfinite",), 40,
                                     lambda s: (_mlp(s), 50.0)),
    }
    module.DEMO_SCENARIOS = ("healthy", "diverging")
    module.run_scenario = _stand_in_run
    monkeypatch.setitem(sys.modules, "torchhealth.scenarios", module)
    monkeypatch.setattr(torchhealth, "scenarios", module, raising=False)
    return module


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_demo_prints_alerts_with_suggestions_and_how_to_open_tensorboard(scenarios, tmp_path, capsys):
    logdir = str(tmp_path / "demo")
    code, out, _ = run_cli(capsys, "demo", "--logdir", logdir)
    assert code == 0
    assert "CRITICAL test_nonfinite" in out
    assert "1. lower the learning rate" in out
    assert f"tensorboard --logdir {logdir}" in out
    assert "no alerts" in out  # the healthy run
    assert sorted(os.listdir(logdir)) == ["diverging", "healthy"]
    assert os.path.exists(os.path.join(logdir, "diverging", "alerts.jsonl"))


def test_demo_one_scenario_and_unknown_names(scenarios, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "demo", "--scenario", "healthy", "--logdir", str(tmp_path), "--steps", "4")
    assert code == 0 and os.listdir(tmp_path) == ["healthy"]
    code, out, _ = run_cli(capsys, "demo", "--scenario", "nope", "--logdir", str(tmp_path))
    assert code == 2 and "unknown scenario 'nope'" in out and "healthy" in out
    code, out, _ = run_cli(capsys, "demo", "--scenario", "list")
    assert code == 0 and "diverging: learning rate far too high" in out


def test_report_table_and_json_read_back_what_the_demo_wrote(scenarios, tmp_path, capsys):
    logdir = str(tmp_path / "demo")
    run_cli(capsys, "demo", "--logdir", logdir)
    code, out, _ = run_cli(capsys, "report", logdir)
    assert code == 0
    assert "grad norm" in out and "update ratio" in out and "dead units" in out
    assert "0" in out and "CRITICAL test_nonfinite" in out and "lower the learning rate" in out

    code, out, _ = run_cli(capsys, "report", logdir, "--json")
    assert code == 0
    runs = {os.path.basename(r["run_dir"]): r for r in json.loads(out)["runs"]}
    assert set(runs) == {"diverging", "healthy"}
    healthy = runs["healthy"]
    assert healthy["alerts"] == [] and healthy["last_step"] == 6
    assert set(healthy["layers"]) >= {"0", "2", "total"}
    layer = healthy["layers"]["0"]
    assert layer["grad_norm_min"] <= layer["grad_norm"] <= layer["grad_norm_max"]
    assert layer["update_ratio"] > 0
    diverging = runs["diverging"]
    assert diverging["alerts"][0]["kind"] == "test_nonfinite"
    assert diverging["layers"]["0"]["grad_norm_max"] in ("nan", "inf")


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

"""Runs a script under ``torchrun --standalone`` from a test, with a hard timeout and this tree on the path."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import torchhealth

REPO_ROOT = Path(torchhealth.__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent


def torchrun(script: str, *args: str, nproc: int = 2, timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs ``tests/dist_scripts/<script>`` on ``nproc`` CPU ranks (gloo); returns the finished process.

    The whole process group (torchrun and its workers) is killed when ``timeout`` passes, so a hung
    collective fails the test instead of hanging CI.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    if os.environ.get("TORCHHEALTH_TEST_DEVICE", "cpu") == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(SCRIPTS / script), *args]
    proc = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"torchrun {script} did not finish in {timeout:.0f}s (hung collective?):\n{out[-4000:]}")
    return subprocess.CompletedProcess(command, proc.returncode, out, None)

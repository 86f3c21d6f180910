"""Makes docs/dashboard.png: a demo run served by the real TensorBoard, shot in headless Chromium.

    python tools/dashboard_screenshot.py [--logdir DIR] [--out docs/dashboard.png]

Needs Debian's ``chromium`` (``apt-get install chromium``). Trains the healthy, vanishing and
dead_units demo scenarios first unless ``--logdir`` already holds runs (three runs keep the charts
readable).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools.tensorboard_server import tensorboard_server  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--logdir", default=None)
    parser.add_argument("--out", default=os.path.join("docs", "dashboard.png"))
    parser.add_argument("--scenarios", nargs="+", default=["healthy", "vanishing", "dead_units"])
    parser.add_argument("--size", default="1600,1240")
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("needs chromium: apt-get install -y chromium")
    logdir = args.logdir or tempfile.mkdtemp(prefix="torchhealth-demo-")
    if not os.listdir(logdir):
        from torchhealth import cli

        cli.main(["demo", "--logdir", logdir, *[a for name in args.scenarios for a in ("--scenario", name)]])
    runs = sorted(os.listdir(logdir))
    with tensorboard_server(logdir, wait_for_run=runs[-1]) as base, tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--window-size={args.size}", "--virtual-time-budget=30000",
                        f"--screenshot={os.path.abspath(args.out)}", f"{base}/#custom_scalars"],
                       check=True, timeout=180, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The real TensorBoard server, over a real run, serves the health tags, the dashboard and the alerts."""

from __future__ import annotations

import contextlib
import io
import urllib.parse

import pytest

from torchhealth import cli
from torchhealth.sinks.tensorboard import ALERTS_TAG, DASHBOARD

from tools.tensorboard_server import ServerUnavailable, get_json, tensorboard_server


def demo_run(log_dir: str) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["demo", "--scenario", "nonfinite", "--steps", "30", "--logdir", log_dir]) == 0


def test_real_tensorboard_serves_health_tags_dashboard_and_alerts(tmp_path):
    demo_run(str(tmp_path))
    try:
        server = tensorboard_server(str(tmp_path), wait_for_run="nonfinite")
        base = server.__enter__()
    except ServerUnavailable as exc:
        pytest.skip(f"TensorBoard's server cannot start here: {exc}")
    try:
        scalar_tags = get_json(base, "/data/plugin/scalars/tags")["nonfinite"]
        families = {tag.split("/")[1] for tag in scalar_tags if tag.startswith("health/")}
        assert {"grad_norm", "weight_norm", "update_ratio", "loss"} <= families
        query = urllib.parse.urlencode({"run": "nonfinite", "tag": "health/grad_norm/total"})
        points = get_json(base, f"/data/plugin/scalars/scalars?{query}")
        assert [p[1] for p in points][:2] == [0, 10]  # [wall_time, step, value] per logged check

        layout = get_json(base, "/data/plugin/custom_scalars/layout")
        titles = {chart["title"] for category in layout["category"] for chart in category["chart"]}
        assert set(DASHBOARD["Gradients"]) <= titles and set(DASHBOARD["Activations"]) <= titles
        assert {c["title"] for c in layout["category"]} == set(DASHBOARD)

        served_tag = ALERTS_TAG
        assert served_tag in get_json(base, "/data/plugin/text/tags")["nonfinite"]
        query = urllib.parse.urlencode({"run": "nonfinite", "tag": served_tag})
        texts = get_json(base, f"/data/plugin/text/text?{query}")
        assert texts and "CRITICAL" in texts[0]["text"] and "nonfinite" in texts[0]["text"]
        assert "<ol>" in texts[0]["text"]  # the suggestions, rendered as a numbered list
    finally:
        server.__exit__(None, None, None)

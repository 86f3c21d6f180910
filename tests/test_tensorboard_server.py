"""The real TensorBoard server, over a real run, serves the health tags, the dashboard and the alerts."""

from __future__ import annotations

import urllib.parse

import pytest
import torch
from torch import nn

import torchhealth
from torchhealth.sinks.tensorboard import ALERTS_TAG, DASHBOARD

from tests.helpers import NonfiniteIsCritical
from tests.tensorboard_server import ServerUnavailable, get_json, tensorboard_server


def diverging_run(log_dir: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=50.0)
    monitor = torchhealth.watch(model, opt, log_dir=log_dir, check_every=2, log_every=2, on_alert=[lambda a: None])
    monitor.detectors.append(NonfiniteIsCritical())
    for _ in range(12):
        x = torch.randn(16, 4)
        loss = nn.functional.mse_loss(model(x), x.sum(1, keepdim=True) * 3)
        loss.backward()
        monitor.log_loss(loss)
        opt.step()
        opt.zero_grad()
    monitor.close()
    assert monitor.alerts


def test_real_tensorboard_serves_health_tags_dashboard_and_alerts(tmp_path):
    diverging_run(str(tmp_path / "diverging"))
    try:
        server = tensorboard_server(str(tmp_path), wait_for_run="diverging")
        base = server.__enter__()
    except ServerUnavailable as exc:
        pytest.skip(f"TensorBoard's server cannot start here: {exc}")
    try:
        scalar_tags = get_json(base, "/data/plugin/scalars/tags")["diverging"]
        assert {"health/grad_norm/0", "health/grad_norm/2", "health/grad_norm/total", "health/loss",
                "health/update_ratio/0", "health/weight_norm/2", "health/zero_fraction/1"} <= set(scalar_tags)
        query = urllib.parse.urlencode({"run": "diverging", "tag": "health/grad_norm/0"})
        points = get_json(base, f"/data/plugin/scalars/scalars?{query}")
        assert [p[1] for p in points] == [0, 2, 4, 6, 8, 10]

        layout = get_json(base, "/data/plugin/custom_scalars/layout")
        titles = {chart["title"] for category in layout["category"] for chart in category["chart"]}
        assert set(DASHBOARD["Gradients"]) <= titles and set(DASHBOARD["Activations"]) <= titles
        assert {c["title"] for c in layout["category"]} == set(DASHBOARD)

        served_tag = f"{ALERTS_TAG}/text_summary"  # torch's add_text appends /text_summary
        assert served_tag in get_json(base, "/data/plugin/text/tags")["diverging"]
        query = urllib.parse.urlencode({"run": "diverging", "tag": served_tag})
        texts = get_json(base, f"/data/plugin/text/text?{query}")
        assert texts and "CRITICAL" in texts[0]["text"] and "test_nonfinite" in texts[0]["text"]
        assert "lower the learning rate" in texts[0]["text"]
    finally:
        server.__exit__(None, None, None)

"""Alerts to the Python logger ``torchhealth`` (the default ``on_alert`` policy)."""

from __future__ import annotations

import logging

from torchhealth.detectors.alert import Alert
from torchhealth.sinks.base import Sink

logger = logging.getLogger("torchhealth")


class LoggingSink(Sink):
    """Logs warnings at WARNING and critical alerts at ERROR level."""

    name = "log"

    def write_alerts(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            logger.log(logging.ERROR if alert.severity == "critical" else logging.WARNING, "%s", alert)

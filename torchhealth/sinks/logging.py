"""Alerts to the Python logger ``torchhealth`` (the default ``on_alert`` policy)."""

from __future__ import annotations

import logging

from torchhealth.records import Alert
from torchhealth.sinks.base import Sink

logger = logging.getLogger("torchhealth")


class LoggingSink(Sink):
    """Logs critical root causes at ERROR, warnings and consequences at WARNING, advisories at INFO level."""

    name = "log"

    def write_alerts(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            level = {"critical": logging.ERROR, "info": logging.INFO}.get(alert.severity, logging.WARNING)
            logger.log(logging.WARNING if alert.caused_by and level > logging.WARNING else level, "%s", alert)

"""``alerts.jsonl``: one JSON object per alert, appended and flushed as it is raised."""

from __future__ import annotations

import json
import os

from torchhealth.records import Alert
from torchhealth.sinks.base import FileSink

ALERTS_FILE = "alerts.jsonl"


class JsonlAlertSink(FileSink):
    """Appends alerts to ``<log_dir>/alerts.jsonl``; critical alerts are fsync'ed at once."""

    name = "jsonl"

    def __init__(self, log_dir: str | None = None) -> None:
        super().__init__(log_dir)
        self._file = None

    @property
    def path(self) -> str:
        """The alerts file."""
        return os.path.join(self.log_dir, ALERTS_FILE)

    def write_alerts(self, alerts: list[Alert]) -> None:
        if not alerts:
            return
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")
        # one write of whole lines, then a flush to the OS: a process killed later loses nothing, and
        # one killed meanwhile leaves at worst a torn last line, never a torn earlier one
        self._file.write("".join(json.dumps(alert.to_dict(), allow_nan=False) + "\n" for alert in alerts))
        self._file.flush()
        if any(a.severity == "critical" for a in alerts):
            os.fsync(self._file.fileno())

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

"""TensorBoard: hierarchical health scalars, a Custom Scalars dashboard, and alerts as text."""

from __future__ import annotations

import logging
from typing import Any, Callable

from torchhealth.records import Alert
from torchhealth.sinks.base import FileSink
from torchhealth.records import Snapshot

try:  # a C implementation of CRC32C for TensorBoard's record checksums (``use_native_checksums``)
    from google_crc32c import implementation as _crc32c_implementation, value as _crc32c
except ImportError:
    _crc32c, _crc32c_implementation = None, None

TAG_PREFIX = "health"
FLUSH_SECS = 10
"""The writer's background thread makes scalars durable at least this often (TensorBoard's default: 120)."""
WRITER_QUEUE = 1000
MAX_REOPENS = 5
"""Times a failed writer is replaced by a new one (a new event file in the same run directory) before
the sink gives up; TensorBoard reads every event file of a run directory as one run."""
logger = logging.getLogger("torchhealth")
ALERTS_TAG = f"{TAG_PREFIX}/alerts"
DASHBOARD = {
    "Gradients": {
        "gradient norm per layer": ["Multiline", [rf"{TAG_PREFIX}/grad_norm/.*"]],
        "update / weight ratio per layer": ["Multiline", [rf"{TAG_PREFIX}/update_ratio/.*"]],
        "weight norm per layer": ["Multiline", [rf"{TAG_PREFIX}/weight_norm/.*"]],
    },
    "Activations": {
        "ReLU zero fraction": ["Multiline", [rf"{TAG_PREFIX}/zero_fraction/.*"]],
        "dead units (fraction of the layer's units)": ["Multiline", [rf"{TAG_PREFIX}/dead_units/.*"]],
        "sigmoid/tanh saturation": ["Multiline", [rf"{TAG_PREFIX}/saturation/.*"]],
    },
    "Loss": {
        "loss": ["Multiline", [rf"{TAG_PREFIX}/loss$", rf"{TAG_PREFIX}/val_loss$"]],
    },
}
"""Custom Scalars layout: category -> chart title -> [chart type, tag regexes]."""


def scalar_tag(family: str, layer: str) -> str:
    """The TensorBoard tag of one statistic of one layer, e.g. ``health/grad_norm/fc1``."""
    return f"{TAG_PREFIX}/{family}/{layer}"


class TensorBoardSink(FileSink):
    """Writes with TensorBoard's own writer: one scalar tag per statistic and layer (never ``add_scalars``).

    The writer is created on the first write, so a run that logs nothing leaves no empty files. A
    write that fails (the run directory removed, the disk full for a moment) does not end the
    dashboard: the failed writer is dropped and a new one, writing a new event file (and making the
    directory again), takes the write, now or at the next write, up to ``MAX_REOPENS`` times.
    """

    name = "tensorboard"

    def __init__(self, log_dir: str | None = None) -> None:
        super().__init__(log_dir)
        self._writer = None
        self.reopens = 0  # writers replaced after a failed write

    @property
    def writer(self):
        """The SummaryWriter, created (and the dashboard layout written) on first use."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            use_native_checksums()
            # a queue of 10 (the default) makes the training thread wait on the writer thread at every
            # log step; the events are still flushed every FLUSH_SECS and at once for critical alerts
            self._writer = SummaryWriter(self.log_dir, max_queue=WRITER_QUEUE, flush_secs=FLUSH_SECS)
            self._writer.add_custom_scalars(DASHBOARD)
        return self._writer

    def write_snapshot(self, snapshot: Snapshot) -> None:
        # One event holding every scalar of the step: the same scalar records add_scalar writes, but
        # one protobuf serialization and one queue entry instead of one per layer and family.
        from tensorboard.compat.proto.summary_pb2 import Summary

        values = [Summary.Value(tag=scalar_tag(family, layer), simple_value=value)
                  for family, layers in snapshot.shown().items() for layer, value in layers.items()]
        for name in ("loss", "val_loss"):
            value = getattr(snapshot, name)
            if value is not None:
                values.append(Summary.Value(tag=f"{TAG_PREFIX}/{name}", simple_value=value))
        if values:
            self._write(lambda writer: writer._get_file_writer().add_summary(Summary(value=values), snapshot.step))

    def write_alerts(self, alerts: list[Alert]) -> None:
        from tensorboard.plugins.text.summary_v2 import text_pb

        def write(writer: Any) -> None:
            # TensorBoard's own text summary keeps the tag exactly (add_text would append "/text_summary").
            for alert in alerts:
                writer._get_file_writer().add_summary(text_pb(ALERTS_TAG, alert.to_markdown()), alert.step)
            if any(a.severity == "critical" for a in alerts):
                writer.flush()

        self._write(write)

    def flush(self) -> None:
        if self._writer is not None:
            self._write(lambda writer: writer.flush())

    def close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()

    def _write(self, write: Callable[[Any], None]) -> None:
        """Runs ``write(writer)``; after a failure, again with a new writer (see the class docstring).

        The writer's thread reports a failed write at the next call, so the event that failed may be
        an earlier one: what was queued since the last flush can be lost, the run's later events are not.

        Raises:
            Exception: The write's error, once ``MAX_REOPENS`` new writers have failed too (the
                monitor then switches the sink off, with the error in its message).
        """
        try:
            write(self.writer)
            return
        except Exception as error:
            self._drop_writer()
            if self.reopens >= MAX_REOPENS:
                raise
            if self.reopens == 0:
                logger.warning("torchhealth: writing TensorBoard events to %s failed (%s); a new event file takes "
                               "over (at most %d times)", self.log_dir, error, MAX_REOPENS)
            self.reopens += 1
        try:  # the new writer makes the directory again; if it fails too, the next write tries another
            write(self.writer)
        except Exception:
            self._drop_writer()

    def _drop_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            try:  # its thread has stopped on the error, so closing does not wait; the flush in it fails again
                writer.close()
            except Exception:
                pass


def use_native_checksums() -> bool:
    """Gives TensorBoard's record writer a native CRC32C (``google-crc32c``); True when it has one.

    Without TensorFlow, TensorBoard checksums every record in pure Python, about 0.12 us a byte:
    0.75 ms for a log step's event of 128 scalars, on the writer's thread, which holds the GIL the
    training thread needs meanwhile. The checksums are the same (compared on a sample before the
    swap, which is made only over TensorBoard's own function); every TensorBoard writer in the
    process gains from it.
    """
    try:
        from tensorboard.compat.tensorflow_stub import pywrap_tensorflow
        from tensorboard.summary.writer import record_writer
    except ImportError:
        return False
    current = getattr(record_writer, "masked_crc32c", None)
    if current is masked_crc32c:
        return True
    if _crc32c is None or _crc32c_implementation != "c" or current is not pywrap_tensorflow.masked_crc32c:
        return False
    sample = bytes(range(256)) * 3
    try:  # a speed-up only: whatever goes wrong here leaves TensorBoard's own checksums in place
        if masked_crc32c(sample) != current(sample):
            return False
    except Exception:
        return False
    record_writer.masked_crc32c = masked_crc32c
    return True


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC32C of ``data``, natively (what TensorBoard's ``masked_crc32c`` computes)."""
    crc = _crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF

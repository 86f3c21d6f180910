"""Where statistics and alerts go: TensorBoard, alerts.jsonl, logging, warnings, callables."""

from torchhealth.sinks.base import FileSink, Sink, SinkContext
from torchhealth.sinks.callback import CallbackSink, WarningSink
from torchhealth.sinks.jsonl import JsonlAlertSink
from torchhealth.sinks.logging import LoggingSink
from torchhealth.sinks.tensorboard import TensorBoardSink


def default_sinks() -> list[Sink]:
    """The sinks a Monitor writes to by default: the TensorBoard dashboard and ``alerts.jsonl``, both
    under the monitor's ``log_dir`` (on rank 0; none without a ``log_dir``). Fresh instances."""
    return [TensorBoardSink(), JsonlAlertSink()]


__all__ = ["Sink", "SinkContext", "FileSink", "CallbackSink", "WarningSink", "JsonlAlertSink", "LoggingSink",
           "TensorBoardSink", "default_sinks"]

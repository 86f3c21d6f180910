"""Where statistics and alerts go: TensorBoard, alerts.jsonl, logging, warnings, callables."""

from torchhealth.sinks.base import Sink
from torchhealth.sinks.callback import CallbackSink, WarningSink
from torchhealth.sinks.jsonl import JsonlAlertSink
from torchhealth.sinks.logging import LoggingSink
from torchhealth.sinks.tensorboard import TensorBoardSink

__all__ = ["Sink", "CallbackSink", "WarningSink", "JsonlAlertSink", "LoggingSink", "TensorBoardSink"]

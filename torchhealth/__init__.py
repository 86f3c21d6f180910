"""torchhealth: a training-health monitor for PyTorch.

Two lines in an existing loop::

    monitor = torchhealth.Monitor(model, optimizer=opt, log_dir="runs/exp1")
    ...
    loss.backward(); monitor.step(loss); opt.step()
"""

from torchhealth.collectors import AttachContext, Collector, default_collectors
from torchhealth.detectors import Detector, default_detectors
from torchhealth.records import Alert
from torchhealth.errors import TrainingHealthError, TrainingHealthWarning
from torchhealth.facts import ModelFacts
from torchhealth.monitor import Monitor
from torchhealth.options import MonitorOptions
from torchhealth.sinks import Sink, SinkContext, default_sinks
from torchhealth.records import Snapshot
from torchhealth.watch import watch

__version__ = "0.1.0"
__all__ = ["Alert", "AttachContext", "Collector", "Detector", "ModelFacts", "Monitor", "MonitorOptions", "Sink",
           "SinkContext", "Snapshot", "TrainingHealthError", "TrainingHealthWarning", "__version__", "default_collectors",
           "default_detectors", "default_sinks", "watch"]

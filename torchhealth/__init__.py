"""torchhealth: a training-health monitor for PyTorch.

Two lines in an existing loop::

    monitor = torchhealth.Monitor(model, optimizer=opt, log_dir="runs/exp1")
    ...
    loss.backward(); monitor.step(loss); opt.step()
"""

from torchhealth.detectors.alert import Alert
from torchhealth.errors import TrainingHealthError, TrainingHealthWarning
from torchhealth.monitor import Monitor
from torchhealth.options import MonitorOptions
from torchhealth.snapshot import Snapshot
from torchhealth.watch import watch

__version__ = "0.1.0"
__all__ = ["Alert", "Monitor", "MonitorOptions", "Snapshot", "TrainingHealthError", "TrainingHealthWarning", "__version__",
           "watch"]

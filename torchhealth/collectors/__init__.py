"""On-device statistic collectors, one file per statistic family."""

from torchhealth.collectors.activations import ActivationCollector
from torchhealth.collectors.base import Collector
from torchhealth.collectors.gradients import GradientCollector
from torchhealth.collectors.loss import LossCollector
from torchhealth.collectors.weights import WeightCollector

__all__ = ["Collector", "ActivationCollector", "GradientCollector", "LossCollector", "WeightCollector"]

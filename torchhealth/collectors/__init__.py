"""On-device statistic collectors, one file per statistic family."""

from torchhealth.collectors.activations import ActivationCollector
from torchhealth.collectors.base import AttachContext, Collector, file_values
from torchhealth.collectors.gradients import GradientCollector
from torchhealth.collectors.loss import LossCollector
from torchhealth.collectors.steps import SkippedStepCollector
from torchhealth.collectors.weights import WeightCollector


def default_collectors() -> list[Collector]:
    """The collectors a Monitor runs by default, unattached (fresh instances: collectors keep state).

    The loss, gradient norms, weight norms and update ratios (with an optimizer), AMP's skipped
    steps, and activation statistics, in that order: the activation hooks go on the model last.
    """
    return [LossCollector(), GradientCollector(), WeightCollector(), SkippedStepCollector(), ActivationCollector()]


__all__ = ["AttachContext", "Collector", "ActivationCollector", "GradientCollector", "LossCollector",
           "SkippedStepCollector", "WeightCollector", "default_collectors", "file_values"]

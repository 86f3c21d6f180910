"""Static checks at attach time: configuration mistakes visible without a training step."""

from __future__ import annotations

from torch import nn

from torchhealth.records import Alert
from torchhealth.detectors.base import Detector
from torchhealth.facts import ModelFacts
from torchhealth.layers import clean_name, unwrap

SUSPICIOUS_DROPOUT = 0.8
"""Dropout rates at or above this keep too little signal to learn from (1.0 keeps none)."""
DROPOUT_KINDS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
FINAL_ACTIVATIONS = {
    nn.Softmax: "CrossEntropyLoss applies log-softmax itself, so a Softmax before it squashes the logits twice and "
                "gradients nearly vanish; return raw logits (use softmax only for predictions)",
    nn.ReLU: "a ReLU on the output clips every negative logit/prediction to 0; remove it so the last layer is linear",
}


class StaticChecks(Detector):
    """Dropout with p >= 1 or a suspicious p; an activation on the final layer (before the loss).

    Args:
        suspicious_dropout: Dropout rate from which a dropout layer is flagged (``SUSPICIOUS_DROPOUT``, 0.8).
    """

    kind = "static"
    thresholds = {"suspicious_dropout": "share"}

    def __init__(self, *, suspicious_dropout: float = SUSPICIOUS_DROPOUT) -> None:
        super().__init__()  # static findings have no episodes: no recover_after
        self.configure(suspicious_dropout=suspicious_dropout)

    def static_check(self, model: nn.Module, facts: ModelFacts) -> list[Alert]:
        model = unwrap(model)
        alerts = []
        for name, module in model.named_modules():
            if isinstance(module, DROPOUT_KINDS) and module.p >= self.suspicious_dropout:
                learns_nothing = module.p >= 1.0
                alerts.append(self.make_alert(
                    facts, kind="suspicious_dropout", layer=clean_name(name), step=0, severity="warning",
                    value=module.p, evidence={"p": module.p, "layers": [clean_name(name)]},
                    message=(f"dropout p={module.p:g} " + ("zeroes every activation in training: nothing reaches the "
                             "layers above, so the model learns nothing" if learns_nothing else
                             "drops most activations; the usual range is 0.1-0.5"))))
        final = _final_module(model)
        if final is not None:
            name, module = final
            for cls, why in FINAL_ACTIVATIONS.items():
                if type(module) is cls:
                    alerts.append(self.make_alert(
                        facts, kind="final_activation", layer=clean_name(name), step=0, severity="warning", value=0.0,
                        evidence={"module": cls.__name__, "layers": [clean_name(name)]},
                        message=f"the model ends in {cls.__name__} (`{clean_name(name)}`): if you train with "
                                f"CrossEntropyLoss or MSELoss, {why}"))
        return alerts


def _final_module(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The last module of a Sequential tail (the only case where forward order is visible statically)."""
    name, module = "", model
    while isinstance(module, nn.Sequential) and len(module):
        index = len(module) - 1
        name, module = f"{name}.{index}" if name else str(index), module[index]
    return (name, module) if name else None

"""The Lightning callback for ``pytorch_lightning.Trainer`` (the package name before Lightning 2.0's ``lightning``)."""

from __future__ import annotations

try:
    import pytorch_lightning as pl
except ImportError as exc:
    raise ImportError("torchhealth.integrations.pytorch_lightning needs pytorch_lightning: "
                      "pip install 'torchhealth[lightning]'") from exc

from torchhealth.integrations.lightning_common import LightningHealthLogic


class TorchHealthCallback(LightningHealthLogic, pl.Callback):
    __doc__ = LightningHealthLogic.__doc__

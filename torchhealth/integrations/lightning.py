"""Lightning callback: ``Trainer(callbacks=[TorchHealthCallback()])``.

Built on ``lightning.pytorch`` when it is installed, else on the older ``pytorch_lightning``. With
both installed and a ``pytorch_lightning.Trainer``, use ``torchhealth.integrations.pytorch_lightning``.
"""

from __future__ import annotations

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - depends on what is installed
    try:
        import pytorch_lightning as pl
    except ImportError as exc:
        raise ImportError("torchhealth.integrations.lightning needs Lightning: pip install 'torchhealth[lightning]'") from exc

from torchhealth.integrations.lightning_common import LightningHealthLogic


class TorchHealthCallback(LightningHealthLogic, pl.Callback):
    __doc__ = LightningHealthLogic.__doc__

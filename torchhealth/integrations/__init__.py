"""Thin adapters onto Monitor for training frameworks; each import-guarded in its own module.

- ``torchhealth.integrations.lightning.TorchHealthCallback`` (Lightning / PyTorch Lightning)
- ``torchhealth.integrations.transformers.TorchHealthCallback`` (Hugging Face ``Trainer``)
"""

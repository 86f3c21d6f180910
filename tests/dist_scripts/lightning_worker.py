"""Lightning's DDP strategy with TorchHealthCallback, under ``torchrun --nproc_per_node=2`` (gloo, CPU).

Run as ``torchrun --standalone --nproc_per_node=2 lightning_worker.py OUT_DIR``. Lightning sees the
torchrun environment and does not spawn processes itself. Two fits: ranks get different data
(units dead on one rank's inputs, alive on the other's), then the last rank's loss goes NaN with
``stop_on_critical=True``. Each rank writes ``OUT_DIR/rank<r>.json``.
"""

from __future__ import annotations

import json
import os
import sys

import lightning.pytorch as pl
import torch
from torch import nn

from tests.dist_scripts.monitor_worker import Collectives, DeadUnitsRule, NonFiniteRule, snapshot_record
from torchhealth.integrations.lightning import TorchHealthCallback
from torchhealth.sinks.base import Sink

CHECK_EVERY = 2


class Module(pl.LightningModule):
    """``net``: Linear(4, 8) -> ReLU -> Linear(8, 2); hidden units 0-3 copy +x, units 4-7 copy -x."""

    def __init__(self, nan_from_step: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        with torch.no_grad():
            self.net[0].weight.copy_(torch.cat([torch.eye(4), -torch.eye(4)]))
            self.net[0].bias.zero_()
        self.nan_from_step = nan_from_step

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.nan_from_step is not None and self.global_step >= self.nan_from_step and self.global_rank == 1:
            x = x * float("nan")
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        # Lightning adds a DistributedSampler (no shuffle): rank r reads items r, r + 2, ... so rank 0
        # gets only positive inputs and rank 1 only negative ones.
        g = torch.Generator().manual_seed(0)
        x = torch.randn(256, 4, generator=g).abs() + 0.1
        x[1::2] *= -1
        data = torch.utils.data.TensorDataset(x, torch.randn(256, 2, generator=g))
        return torch.utils.data.DataLoader(data, batch_size=8)


class Recorder(Sink):
    name = "recorder"

    def __init__(self) -> None:
        self.snapshots = []

    def write_snapshot(self, snapshot) -> None:
        self.snapshots.append(snapshot_record(snapshot))


class RecordingCallback(TorchHealthCallback):
    """The shipped callback plus test-only rules, a snapshot recorder and a collective counter."""

    def __init__(self, counter: Collectives, **options) -> None:
        super().__init__(**options)
        self.counter, self.recorder, self.collectives, self.received = counter, Recorder(), [], []

    def on_fit_start(self, trainer, pl_module):
        super().on_fit_start(trainer, pl_module)
        self.monitor.detectors += [DeadUnitsRule(), NonFiniteRule()]
        self.monitor.sinks.append(self.recorder)
        step = self.monitor.step

        def counted_step(*args, **kwargs):
            index = self.monitor.step_count
            alerts, counts = self.counter.around(lambda: step(*args, **kwargs))
            self.collectives.append([index, *counts])
            return alerts

        self.monitor.step = counted_step


def fit(out_dir: str, name: str, counter: Collectives, module: Module, max_steps: int) -> dict:
    callback = RecordingCallback(counter, check_every=CHECK_EVERY, log_every=CHECK_EVERY, sample_every=1,
                                 window_samples=16, stop_on_critical=True, on_alert=[lambda a: None])
    trainer = pl.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_steps=max_steps, callbacks=[callback],
                         default_root_dir=os.path.join(out_dir, name), enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False,
                         logger=pl.loggers.TensorBoardLogger(os.path.join(out_dir, name), name="tb"))
    trainer.fit(module)
    monitor = callback.monitor
    return {"rank": trainer.global_rank, "global_step": trainer.global_step, "snapshots": callback.recorder.snapshots,
            "alerts": [a.to_dict() for a in monitor.alerts], "collectives": callback.collectives,
            "log_dir": monitor.log_dir, "local_log_dir": trainer.logger.log_dir}


def main() -> None:
    out_dir = sys.argv[1]
    counter = Collectives()
    results = {"pid": os.getpid(),
               "different_data": fit(out_dir, "different_data", counter, Module(), max_steps=12),
               "nan_one_rank": fit(out_dir, "nan_one_rank", counter, Module(nan_from_step=5), max_steps=40)}
    with open(os.path.join(out_dir, f"rank{results['different_data']['rank']}.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
    main()

"""What a run shows in TensorBoard beyond the loss and accuracy curves, once per epoch.

The CLI adds these to every run (see ``cli.py``), each tunable from the config:

- ``lr_monitor``: the learning rate (Lightning's ``LearningRateMonitor``);
- ``throughput``: training frames per second;
- ``figures``: validation figures (:mod:`timit_lit.callbacks.figures`);
- the HParams tab: the run's whole config with its best ``val/acc``
  (:mod:`timit_lit.callbacks.run_config`).

All of them work from host-side counters or once per epoch: nothing here makes the
device synchronise on a training step. (The phone error rate and boundary accuracies are
logged by :mod:`timit_lit.callbacks.phone_errors`.)
"""

from __future__ import annotations

import time
from typing import Any, Optional

from pytorch_lightning import LightningModule, Trainer
from pytorch_lightning.callbacks import Callback, LearningRateMonitor
from pytorch_lightning.loggers import TensorBoardLogger


def tensorboard_logger(trainer: Trainer) -> Optional[TensorBoardLogger]:
    """The run's TensorBoard logger, if it has one."""
    return next((logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)), None)


class EpochLearningRate(LearningRateMonitor):
    """Lightning's ``LearningRateMonitor`` (``logging_interval`` defaults to ``epoch`` in the
    CLI), except that a run without a logger skips it instead of failing: the CLI adds it to
    every run, ``--trainer.logger false`` included."""

    def on_train_start(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_start(trainer, *args, **kwargs)

    def on_train_batch_start(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_batch_start(trainer, *args, **kwargs)

    def on_train_epoch_start(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_epoch_start(trainer, *args, **kwargs)


class EpochThroughput(Callback):
    """Logs ``train/frames_per_s``: the rows trained in an epoch (all processes) divided by
    the wall time from the epoch's start to the end of its last training batch (validation
    not counted). It counts rows from the batch's shape (utterance batches: their lengths,
    summed on the device and read once per epoch) and reads the clock on the host, so a
    step never waits for the device (on a GPU the last few queued steps may still be running
    when the clock stops: a negligible error over an epoch). Under DDP each process times
    its own epoch, and the mean of their figures is logged.

    Args:
        name: the scalar's tag in TensorBoard.
    """

    batch_hooks_per_call = True  # a call of several steps counts its rows alike (timit_lit.models.train_steps)

    def __init__(self, name: str = "train/frames_per_s"):
        self.name = name
        self._start = self._end = 0.0
        self._rows = 0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start, self._end, self._rows = time.perf_counter(), 0.0, 0

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        self._rows += _frames(batch)
        self._end = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        rows = int(self._rows)  # the epoch's one read of a count kept on the device
        if rows and self._end > self._start:
            rate = rows * trainer.world_size / (self._end - self._start)
            # sync_dist: the mean of the processes' estimates (each times its own epoch), once per epoch.
            pl_module.log(self.name, rate, on_epoch=True, on_step=False, sync_dist=True)


def _frames(batch):
    """Real frames in a training batch: one (features, labels) batch, a list of them
    (model.steps_per_call > 1), or utterances (features, labels, lengths[, teacher's
    posteriors]) counted by length,
    on the device (a tensor, read once per epoch: no step waits for it)."""
    if isinstance(batch, list):
        return sum(_frames(b) for b in batch)
    if len(batch) >= 3:
        return batch[2].sum()
    return batch[1].numel()

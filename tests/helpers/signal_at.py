"""Test helper: a callback that makes the training process signal itself at a chosen batch.

Used as ``--trainer.callbacks`` of a ``python -m timit_lit fit`` subprocess, so that a real
SIGKILL lands at the same point of an epoch every time, however busy the machine is.
"""

import os
import signal

from pytorch_lightning.callbacks import Callback


class SignalAt(Callback):
    def __init__(self, signal_name: str = "SIGKILL", epoch: int = 1, batch: int = 5):
        self.signum = getattr(signal, signal_name)
        self.epoch = epoch
        self.batch = batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), self.signum)


class CrashAt(Callback):
    """Raises at a chosen batch, in-process: the run stops there, its last.ckpt that of the epoch before."""

    def __init__(self, epoch: int = 1, batch: int = 0):
        self.epoch = epoch
        self.batch = batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise RuntimeError(f"crash at epoch {self.epoch}, batch {self.batch}")

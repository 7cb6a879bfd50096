"""Surviving faults: a killed or preempted ``fit`` continues where it stopped, exactly.

The pieces, all used by the CLI:

- :class:`ResumeState`, a callback that puts what Lightning's checkpoints lack into every
  checkpoint: the global random states (the training order is drawn from torch's global
  RNG at the start of each epoch) and the logger version the run writes to. It also has a
  resumed fit's training state checked before Lightning restores it.
- :class:`LastCheckpoint`, the ``last.ckpt`` writer: after every epoch, as any
  ``ModelCheckpoint``, and also when the process gets SIGTERM (``kill``, ``timeout``, a
  cluster preempting the job).
- :class:`AtomicCheckpointIO`: checkpoints written under a temporary name beside the
  target and renamed, so a kill never leaves a truncated ``last.ckpt``, and a full disk
  stops the run with one line, the previous file kept.

What ``--ckpt_path last`` / ``hpc`` mean, and reading a checkpoint, are in :mod:`timit_lit.checkpoints`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.plugins import TorchCheckpointIO
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.exceptions import SIGTERMException
from pytorch_lightning.utilities.rank_zero import rank_zero_info

from timit_lit.atomic import atomic_file
from timit_lit.checkpoints.training_state import CHECKPOINT_KEY, check_training_state
from timit_lit.errors import OutputError
from timit_lit.lightning_api import collect_rng_states, set_rng_states


class ResumeState(Callback):
    """Saves the global RNG states and the logger version in every checkpoint; restores the
    RNG states when a run resumes, and has the training state Lightning then restores (loops,
    optimizers, schedulers) checked first (:func:`~timit_lit.checkpoints.check_training_state`).

    The states are restored as the checkpoint is loaded. From there to the first training
    batch the only draws from the global RNG are the training DataLoader's (its iterator's
    base seed and RandomSampler's seed); the sanity-check validation runs under Lightning's
    ``isolate_rng``. So a run resumed from an end-of-epoch checkpoint draws the same
    shuffles as one that was never stopped.
    """

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "rng_states": _to_tensors(collect_rng_states()),
            "logger_version": trainer.logger.version if trainer.logger is not None else None,
        }
        _flush(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The previous epoch's train/* values are logged just after its checkpoint is saved.
        _flush(trainer)

    _resumed: Optional[dict] = None  # the checkpoint a fit resumes from, until its training state is checked

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        states = checkpoint.get(CHECKPOINT_KEY, {}).get("rng_states")
        if states is not None:
            set_rng_states(_from_tensors(states))
        self._resumed = checkpoint if trainer.state.fn == TrainerFn.FITTING else None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Between making the optimizers and restoring them: check what Lightning is about to
        # restore against them.
        if self._resumed is not None:
            checkpoint, self._resumed = self._resumed, None
            check_training_state(str(trainer.ckpt_path), checkpoint, trainer)


def _flush(trainer: pl.Trainer) -> None:
    """Write the loggers' buffered events to disk (TensorBoard's writer holds them for up to
    two minutes), so a killed run's curves reach as far as its checkpoints: what comes later
    is logged again by the resumed run."""
    for logger in trainer.loggers:
        logger.save()


def _to_tensors(states: dict[str, Any]) -> dict[str, Any]:
    """Lightning's RNG states with numpy's key array as a tensor, so that checkpoints stay
    loadable with ``torch.load(weights_only=True)``."""
    name, keys, pos, has_gauss, cached = states["numpy"]
    return {**states, "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached)}


def _from_tensors(states: dict[str, Any]) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = states["numpy"]
    states = {**states, "numpy": (name, keys.numpy().astype(np.uint32), pos, has_gauss, cached)}
    if not torch.cuda.is_available():
        states.pop("torch.cuda", None)  # a GPU checkpoint resumed on a CPU machine
    return states


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt``: rewritten after every epoch, and written once more on SIGTERM.

    Lightning turns SIGTERM into a ``SIGTERMException`` once the current batch is done
    (under DDP every process stops at the same batch); this callback then saves the state
    of that step, so a preempted job loses at most one batch of work. Resuming from such a
    mid-epoch checkpoint runs that epoch again whole, on a fresh shuffle (Lightning warns about it),
    so unlike a resume from an end-of-epoch ``last.ckpt`` it is not bit-identical to an
    uninterrupted run.
    """

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and trainer.state.fn == TrainerFn.FITTING and self.dirpath is not None:
            path = os.path.join(self.dirpath, f"{self.filename or 'last'}{self.FILE_EXTENSION}")
            trainer.save_checkpoint(path)
            rank_zero_info(f"SIGTERM: saved {path} at step {trainer.global_step}; resume with --ckpt_path last")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, with its temporary file in the target's own folder.

    Lightning's own atomic save goes through an fsspec transaction whose temporary file is
    in the system temp folder; where that is another filesystem than the run folder (common
    on clusters) the final move is a copy, and a job killed during it leaves a truncated
    checkpoint. A rename within one folder is atomic. Remote paths are left to Lightning.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with atomic_file(path, "wb", sync=True) as f:
                torch.save(checkpoint, f)
        except OSError as error:  # a full disk, a quota: the run stops, and says what it kept
            raise OutputError(f"{path}: cannot write the checkpoint ({error.strerror or error}); nothing written, "
                              f"any previous file kept") from error

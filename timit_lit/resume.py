"""Surviving faults: a killed or preempted ``fit`` continues where it stopped, exactly.

The pieces, all used by the CLI:

- :class:`ResumeState`, a callback that puts what Lightning's checkpoints lack into every
  checkpoint: the global random states (the training order is drawn from torch's global
  RNG at the start of each epoch) and the logger version the run writes to.
- :class:`LastCheckpoint`, the ``last.ckpt`` writer: after every epoch, as any
  ``ModelCheckpoint``, and also when the process gets SIGTERM (``kill``, ``timeout``, a
  cluster preempting the job).
- :class:`AtomicCheckpointIO`: checkpoints written under a temporary name beside the
  target and renamed, so a kill never leaves a truncated ``last.ckpt``.
- :func:`find_last_checkpoint` and :func:`find_hpc_checkpoint`: what ``--ckpt_path last``
  and ``--ckpt_path hpc`` mean on the command line; :func:`read_checkpoint` opens a
  checkpoint file given by the user, with one-line errors.
"""

from __future__ import annotations

import os
import re
import zipfile
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

from timit_lit.data import InputError
from timit_lit.trust import checkpoint_network
from pytorch_lightning.utilities.seed import _collect_rng_states, _set_rng_states

CHECKPOINT_KEY = "timit_lit"  # where ResumeState keeps its entries in a checkpoint


class ResumeState(Callback):
    """Saves the global RNG states and the logger version in every checkpoint; restores the
    RNG states when a run resumes.

    The states are restored as the checkpoint is loaded. From there to the first training
    batch the only draws from the global RNG are the training DataLoader's (its iterator's
    base seed and RandomSampler's seed); the sanity-check validation runs under Lightning's
    ``isolate_rng``. So a run resumed from an end-of-epoch checkpoint draws the same
    shuffles as one that was never stopped.
    """

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "rng_states": _to_tensors(_collect_rng_states()),
            "logger_version": trainer.logger.version if trainer.logger is not None else None,
        }
        _flush(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The previous epoch's train/* values are logged just after its checkpoint is saved.
        _flush(trainer)

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        states = checkpoint.get(CHECKPOINT_KEY, {}).get("rng_states")
        if states is not None:
            _set_rng_states(_from_tensors(states))


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
    mid-epoch checkpoint finishes the epoch on a fresh shuffle (Lightning warns about it),
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
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def find_last_checkpoint(root: Path, pattern: str = "*/checkpoints/last.ckpt") -> Optional[Path]:
    """The newest file matching ``pattern`` under ``root`` (e.g. ``lightning_logs``), by
    modification time.

    Modification time rather than the version number: a resumed run writes into its
    original, lower-numbered folder, so the checkpoint written last, not the folder made
    last, is the state of the run that was running last (Lightning's own ``last`` picks
    by modification time too).
    """
    candidates = [p for p in root.glob(pattern) if p.is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime_ns, default=None)


def find_hpc_checkpoint(root_dir: Path) -> Optional[Path]:
    """Lightning's ``hpc`` checkpoint: the highest ``hpc_ckpt_N.ckpt`` in the Trainer's
    ``default_root_dir``, written on SLURM's requeue signal."""
    numbered = {int(p.stem.split("_")[-1]): p for p in root_dir.glob("hpc_ckpt_*.ckpt") if p.stem.split("_")[-1].isdigit()}
    return numbered[max(numbered)] if numbered else None


def logger_version(checkpoint: dict, path: Path) -> Any:
    """The logger version the run that saved ``checkpoint`` wrote to: recorded by
    :class:`ResumeState`, or, for checkpoints saved before it existed, the
    ``version_N`` folder that holds ``checkpoints/last.ckpt``."""
    recorded = checkpoint.get(CHECKPOINT_KEY, {}).get("logger_version")
    if recorded is not None:
        return recorded
    folder = path.parent.parent.name
    return int(folder[len("version_") :]) if folder.startswith("version_") and folder[8:].isdigit() else folder


# ckpt_path values that Lightning resolves itself rather than reading a file.
_SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")


def read_checkpoint(path) -> Optional[tuple[str, dict]]:
    """The path and contents of a checkpoint file, checked: read without
    unpickling code, and naming no network but a known one (:mod:`timit_lit.trust`). None
    for no path and for Lightning's special values such as ``best``, which it resolves itself."""
    if not path or path in _SPECIAL_CKPT_PATHS or str(path).startswith("registry:"):
        return None
    if not Path(path).is_file():
        raise InputError(f"{path}: checkpoint file not found")
    _check_zip(path)
    try:
        # Read whole, not memory-mapped: torch then checks each tensor against the size of its
        # zip member, where a map would read past a short one into the next (or past the end).
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        if "Weights only load failed" in str(error):  # torch refused a pickled object: say what, not "retry unsafely"
            found = re.search(r"GLOBAL (\S+)", str(error))
            raise InputError(f"{path}: not a readable checkpoint: it holds a pickled object "
                             f"{found.group(1) if found else '(not a tensor or plain value)'}, "
                             f"and checkpoints are read as weights only") from None
        raise InputError(f"{path}: not a readable checkpoint ({type(error).__name__}: {error})") from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise InputError(f"{path}: not a Lightning checkpoint (no state_dict)")
    weights = checkpoint["state_dict"]
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise InputError(f"{path}: damaged checkpoint (its state_dict is not a mapping of names to tensors)")
    if not isinstance(checkpoint.get("datamodule_hyper_parameters", {}), dict):
        raise InputError(f"{path}: damaged checkpoint (its datamodule_hyper_parameters is not a mapping)")
    checkpoint_network(str(path), checkpoint)  # before anything resolves the class it names
    return str(path), checkpoint


def _check_zip(path) -> None:
    """A checkpoint's members checked against their CRCs: torch reads tensors without
    checking, so a damaged byte in a shared file would silently change the weights."""
    if not zipfile.is_zipfile(path):
        return  # torch.load says what it is not
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except Exception as error:  # zipfile raises several types for a damaged archive
        raise InputError(f"{path}: damaged checkpoint ({type(error).__name__}: {error})") from None
    if bad is not None:
        raise InputError(f"{path}: damaged checkpoint ({bad} does not match its checksum)")

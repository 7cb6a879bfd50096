"""What a finished ``fit`` prints: what it made, and the commands to run next."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional

import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger

from timit_lit.callbacks.resume import LastCheckpoint
from timit_lit.data.files import TEST_LABELS


def fit_summary(trainer, command_line: list[str]) -> list[str]:
    """What a finished ``fit`` made, and the commands to run next with the same ``--config``
    and ``--data`` options: the lines the CLI prints last."""
    best_callback, best, last = run_checkpoints(trainer)
    lines = ["", "timit_lit: fit finished"]
    if best and best_callback.monitor:
        saved = torch.load(best, map_location="cpu", weights_only=True, mmap=True)
        score = best_callback.best_model_score
        score = f"{float(score):.4f} " if score is not None else ""
        lines.append(f"  best {best_callback.monitor} {score}at epoch {saved['epoch']}: {_relative(best)}")
    elif best:
        lines.append(f"  no validation: the last epoch's checkpoint is {_relative(best)}")
    if last is not None:
        lines.append(f"  last epoch (resume with --ckpt_path last): {_relative(last)}")
        best = best or str(last)
    tensorboard = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
    if tensorboard is not None:
        lines.append(f"  curves: tensorboard --logdir {_relative(tensorboard.root_dir)}")
    if best:
        options = _config_and_data_options(command_line)
        data = trainer.datamodule
        commands = ["test"] if (Path(data.data_dir) / TEST_LABELS).is_file() else []
        lines.append("  next:")
        for command in (*commands, "predict"):
            lines.append("    " + shlex.join(["python", "-m", "timit_lit", command, *options, "--ckpt_path", _relative(best)]))
    return lines


def run_checkpoints(trainer) -> tuple[Optional[ModelCheckpoint], str, Optional[Path]]:
    """A finished fit's best-checkpoint callback, its best checkpoint's path ("" if none) and
    ``last.ckpt`` (None if it was not written)."""
    best_callback = next((c for c in trainer.checkpoint_callbacks if not isinstance(c, LastCheckpoint)), None)
    last_callback = next((c for c in trainer.checkpoint_callbacks if isinstance(c, LastCheckpoint)), None)
    best = best_callback.best_model_path if best_callback else ""
    last = Path(last_callback.dirpath or Path(best).parent) / f"{last_callback.filename}.ckpt" if last_callback else None
    return best_callback, best, last if last is not None and last.is_file() else None


def _relative(path) -> str:
    """``path`` relative to the working folder when it lies inside it, else absolute."""
    path = Path(path).absolute()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def _config_and_data_options(command_line: list[str]) -> list[str]:
    """The ``--config`` / ``-c`` and ``--data...`` options of a command line, with their values."""
    kept, i = [], 0
    while i < len(command_line):
        token = command_line[i]
        name = token.split("=", 1)[0]
        if name in ("--config", "-c", "--data") or name.startswith("--data."):
            kept.append(token)
            if "=" not in token and i + 1 < len(command_line) and not command_line[i + 1].startswith("--"):
                kept.append(command_line[i + 1])
                i += 1
        i += 1
    return kept

"""The logger a run gets when its config names none: Lightning's TensorBoard logger, as
this project makes it.

Lightning's default is a ``TensorBoardLogger`` in ``trainer.default_root_dir`` (runs in
``lightning_logs/version_N``). This project's differs in one setting,
``default_hp_metric`` off: the HParams tab gets the run's best ``val/acc`` from
:class:`~timit_lit.callbacks.RunConfig` instead of a placeholder. The CLI builds it from
here when a run starts, when a resumed fit logs into its run's folder again and when an
evaluation logs into its checkpoint's run; ``--ckpt_path last`` looks for runs where it
keeps them. One place, so that those four agree.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from pytorch_lightning.loggers import TensorBoardLogger

LOGGER_CLASS = "pytorch_lightning.loggers.TensorBoardLogger"
RUNS_FOLDER = "lightning_logs"  # TensorBoardLogger's default name: its runs are version_N folders in it


def first_logger(config) -> Any:
    """The first logger's config (it decides the run folder): None or True for the default
    logger, False for none, else a ``class_path`` / ``init_args`` namespace."""
    logger = config.trainer.logger
    if isinstance(logger, list):
        return logger[0] if logger else False
    return logger


def uses_default_logger(config) -> bool:
    """Whether the run's config leaves the logger to the default (``trainer.logger`` unset or true)."""
    logger = first_logger(config)
    return logger is None or logger is True


def default_logger(root_dir: Optional[str], **init_args) -> dict:
    """The default logger as a config (``class_path`` / ``init_args``), in ``root_dir`` (the
    Trainer's ``default_root_dir``; the working directory if None), with ``init_args`` (a
    ``version``, a ``name``) on top."""
    return {"class_path": LOGGER_CLASS,
            "init_args": {"save_dir": root_dir or os.getcwd(), "default_hp_metric": False, **init_args}}


def make_default_logger(root_dir: Optional[str], **init_args) -> TensorBoardLogger:
    """The default logger itself, as :func:`default_logger` configures it."""
    return TensorBoardLogger(**default_logger(root_dir, **init_args)["init_args"])


def default_runs_folder(root_dir: Optional[str]) -> Path:
    """Where the default logger keeps its runs (``version_N`` folders)."""
    return Path(root_dir or ".") / RUNS_FOLDER

"""What ``--ckpt_path last``, ``best`` and ``hpc`` mean: the checkpoint each finds, or one line saying why none."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from timit_lit.checkpoints.reading import read_checkpoint
from timit_lit.checkpoints.training_state import CHECKPOINT_KEY
from timit_lit.default_logger import default_runs_folder, first_logger, uses_default_logger
from timit_lit.errors import InputError


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


def ckpt_path_last(config, asked: str = "last") -> Path:
    """What ``--ckpt_path last`` means: the newest ``last.ckpt`` of the runs kept where this
    config's logger keeps them (``lightning_logs/version_*/checkpoints/`` by default)."""
    name = f"{config.last_checkpoint.filename or 'last'}.ckpt"
    root = Path(config.trainer.default_root_dir or ".")
    logger = first_logger(config)
    if config.last_checkpoint.dirpath:
        where, pattern = Path(config.last_checkpoint.dirpath), name
    elif logger is False:  # no logger: Lightning writes to <default_root_dir>/checkpoints
        where, pattern = root / "checkpoints", name
    elif uses_default_logger(config):
        where, pattern = default_runs_folder(config.trainer.default_root_dir), f"*/checkpoints/{name}"
    elif "init_args" in logger and logger.init_args.get("save_dir") is not None:
        where, pattern = Path(logger.init_args.save_dir) / (logger.init_args.get("name") or ""), f"*/checkpoints/{name}"
    else:
        raise InputError(f"--ckpt_path {asked}: cannot tell where {logger.class_path} keeps its runs; pass the checkpoint's path")
    found = find_last_checkpoint(where, pattern)
    if found is None:
        what = "to resume from (start without --ckpt_path" if asked == "last" else "of a run (train one first"
        raise InputError(f"{where}: --ckpt_path {asked} found no {pattern} {what}, or pass a checkpoint's path)")
    return found


def ckpt_path_hpc(config) -> Path:
    """What ``--ckpt_path hpc`` means: :func:`find_hpc_checkpoint` in ``trainer.default_root_dir``."""
    root = Path(config.trainer.default_root_dir or ".")
    found = find_hpc_checkpoint(root)
    if found is None:
        raise InputError(f"{root}: --ckpt_path hpc found no hpc_ckpt_N.ckpt (written on SLURM's requeue signal)")
    return found


def ckpt_path_best(config) -> Path:
    """What ``--ckpt_path best`` means: the best-``val/acc`` checkpoint of the newest run (the
    run whose ``last.ckpt`` ``--ckpt_path last`` finds), as its ``last.ckpt`` records it."""
    last = ckpt_path_last(config, asked="best")
    saved = read_checkpoint(last)[1].get("callbacks", {})
    monitor = config.checkpoint.monitor or "val/acc"
    recorded = next((state.get("best_model_path") for state in saved.values()
                     if isinstance(state, dict) and state.get("monitor") == monitor), None)
    if recorded:
        for candidate in (last.parent / Path(recorded).name, Path(recorded)):  # beside last.ckpt if the run moved
            if candidate.is_file():
                return candidate
    raise InputError(f"{last.parent}: --ckpt_path best: the newest run has no best-{monitor} checkpoint "
                     f"(was it trained without validation? use --ckpt_path last, or pass a checkpoint's path)")

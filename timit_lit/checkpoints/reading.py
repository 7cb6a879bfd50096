"""Reading a checkpoint file as data: never unpickling code, checked whole, brought up to date, trusted."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Optional

import torch

from timit_lit.checkpoints.migration import update_old_hyperparameters
from timit_lit.checkpoints.trust import checkpoint_network
from timit_lit.errors import InputError

# ckpt_path values that Lightning resolves itself rather than reading a file.
_SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")


def read_checkpoint(path) -> Optional[tuple[str, dict]]:
    """The path and contents of a checkpoint file, checked: read without
    unpickling code, and naming no network but a known one (:func:`checkpoint_network`). None
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
    update_old_hyperparameters(checkpoint.get("hyper_parameters"))
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

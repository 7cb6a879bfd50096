"""A teacher's class posteriors for the training rows (``data.soft_targets``), read and checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from timit_lit.data.files import TRAIN_FEATURES
from timit_lit.errors import InputError

CHUNK_ROWS = 1 << 16  # rows checked per read of the memory map


def teacher_posteriors(path: Path, n_rows: int, num_classes: int) -> np.ndarray:
    """The memory map of ``path``, checked to hold one distribution over ``num_classes``
    classes for each of the ``n_rows`` rows of the training file, in its order."""
    try:
        posteriors = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: data.soft_targets is not a readable .npy array ({error})") from None
    if posteriors.shape != (n_rows, num_classes) or posteriors.dtype.kind != "f":
        raise InputError(f"{path}: a {posteriors.dtype} array of shape {posteriors.shape}; data.soft_targets needs "
                         f"{num_classes} class posteriors (floats) for each of the {n_rows:,} rows of "
                         f"{TRAIN_FEATURES}, in its order")
    for start in range(0, n_rows, CHUNK_ROWS):
        chunk = np.asarray(posteriors[start : start + CHUNK_ROWS], dtype=np.float32)
        wrong = ~np.isfinite(chunk).all(axis=1) | (chunk < 0).any(axis=1) | (np.abs(chunk.sum(axis=1) - 1) > 1e-2)
        if wrong.any():
            raise InputError(f"{path}: row {start + int(np.flatnonzero(wrong)[0])} is not a distribution over the "
                             f"classes (values >= 0 that sum to 1)")
    return posteriors

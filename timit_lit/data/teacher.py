"""A teacher's class posteriors, read and checked: for the training rows (``data.soft_targets``)
or for the test rows a fit learns from (``data.test_targets``, transductive)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from timit_lit.data.files import TEST_FEATURES, TRAIN_FEATURES
from timit_lit.data.row_space import RowSpace
from timit_lit.errors import InputError

CHUNK_ROWS = 1 << 16  # rows checked per read of the memory map


def teacher_posteriors(path: Path, n_rows: int, num_classes: int, option: str, file: str) -> np.ndarray:
    """The memory map of ``path`` (given as ``option``), checked to hold one distribution over
    ``num_classes`` classes for each of the ``n_rows`` rows of ``file``, in its order."""
    try:
        posteriors = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: {option} is not a readable .npy array ({error})") from None
    if posteriors.shape != (n_rows, num_classes) or posteriors.dtype.kind != "f":
        raise InputError(f"{path}: a {posteriors.dtype} array of shape {posteriors.shape}; {option} needs "
                         f"{num_classes} class posteriors (floats) for each of the {n_rows:,} rows of "
                         f"{file}, in its order")
    for start in range(0, n_rows, CHUNK_ROWS):
        chunk = np.asarray(posteriors[start : start + CHUNK_ROWS], dtype=np.float32)
        wrong = ~np.isfinite(chunk).all(axis=1) | (chunk < 0).any(axis=1) | (np.abs(chunk.sum(axis=1) - 1) > 1e-2)
        if wrong.any():
            raise InputError(f"{path}: row {start + int(np.flatnonzero(wrong)[0])} is not a distribution over the "
                             f"classes (values >= 0 that sum to 1)")
    return posteriors


def transductive_targets(posteriors: np.ndarray, kind: str, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """What each test row learns (float32, one row per test row) and which rows learn at all:
    the teacher's posteriors as they are (``kind`` ``posteriors``) or its most likely class
    as a one-hot pseudo-label (``labels``), for the rows whose most likely class has at
    least ``confidence``; the other rows learn nothing."""
    targets = np.empty(posteriors.shape, dtype=np.float32)
    taught = np.empty(len(posteriors), dtype=bool)
    for start in range(0, len(posteriors), CHUNK_ROWS):
        chunk = np.asarray(posteriors[start : start + CHUNK_ROWS], dtype=np.float32)
        taught[start : start + len(chunk)] = chunk.max(axis=1) >= confidence
        if kind == "labels":
            chunk = np.eye(chunk.shape[1], dtype=np.float32)[chunk.argmax(axis=1)]
        targets[start : start + len(chunk)] = chunk
    return targets, taught


def teachers_by_row_id(folder, space: RowSpace, soft_targets: Optional[str], test_targets: Optional[str],
                       test_targets_as: str, confidence: float) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """The teachers' posteriors by row id of ``space`` (zeros at rows without one) and the test
    rows that learn from them (``data.test_targets``), a mask by row id; None for what is not
    given. ``folder`` is the data's :class:`~timit_lit.data.folder.DataFolder`."""
    given = []  # (file, what each of its rows learns, in the file's order)
    taught = None
    if soft_targets:
        n_rows = len(folder.features(TRAIN_FEATURES))
        soft = teacher_posteriors(Path(soft_targets), n_rows, folder.num_classes, "data.soft_targets", TRAIN_FEATURES)
        if not space.in_utterance_order:
            return soft, None  # the training file's own rows are the ids: the memory map as it is
        given.append((TRAIN_FEATURES, soft))
    if test_targets:
        n_rows = len(folder.features(TEST_FEATURES))
        posteriors = teacher_posteriors(Path(test_targets), n_rows, folder.num_classes, "data.test_targets",
                                        TEST_FEATURES)
        targets, taught_rows = transductive_targets(posteriors, test_targets_as, confidence)
        given.append((TEST_FEATURES, targets))
        taught = space.by_row_id(TEST_FEATURES, taught_rows, False)
    if not given:
        return None, None
    teacher = np.zeros((space.n_rows, folder.num_classes), dtype=np.float32)
    for file, values in given:
        teacher[space.positions(file)] = values
    return teacher, taught

"""How a fit's labelled rows are split into training and validation rows (``data.split``)."""

from __future__ import annotations

import numpy as np

from timit_lit.data.row_space import RowSpace
from timit_lit.errors import InputError


def split_rows(how: str, labels: np.ndarray, val_ratio: float, seed: int, space: RowSpace) -> tuple[np.ndarray, np.ndarray]:
    """Which labelled rows of ``space`` (``labels`` by row id, negative where none) train and
    which validate, two boolean masks, as ``TimitDataModule``'s ``split`` option says."""
    labelled = labels >= 0
    n_labelled = int(labelled.sum())
    if how == "contiguous":
        if space.in_utterance_order and not space.utterances.in_file_order:
            raise InputError(f"{space.folder}: data.split contiguous needs rows in time order; these were re-ordered "
                             f"into utterances: use data.split labels (or utterance)")
        in_val = np.arange(len(labels)) >= int(n_labelled * (1 - val_ratio))  # the notebook's rounding
    elif how == "labels":
        rows = np.flatnonzero(labelled)
        chosen = np.random.default_rng(seed).permutation(len(rows))[: int(round(val_ratio * len(rows)))]
        in_val = np.zeros(len(labels), dtype=bool)
        in_val[rows[chosen]] = True
    else:
        utterance = space.utterance
        lengths = np.bincount(utterance[labelled], minlength=len(space.starts) - 1)
        # The utterances with labels (every one, unless the ids number the test file's rows too),
        # in a random order, until they hold val_ratio of the labelled rows.
        candidates = np.flatnonzero(lengths)
        order = candidates[np.random.default_rng(seed).permutation(len(candidates))]
        n_val = int(np.searchsorted(np.cumsum(lengths[order]), val_ratio * n_labelled)) + 1 if val_ratio else 0
        is_val = np.zeros(len(lengths), dtype=bool)
        is_val[order[:n_val]] = True
        in_val = is_val[utterance]
    return labelled & ~in_val, labelled & in_val

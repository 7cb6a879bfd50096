"""The datasets a split is served from: rows (frames) or whole utterances, a batch per call."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from timit_lit.data.row_space import RowSpace

# The label of a frame that is served as input but scored nowhere (a test row, a held-out label
# inside an utterance); padding's is -1 (timit_lit.models.base.IGNORED).
UNLABELLED = -2
# The label of a frame that learns from a teacher's posteriors only (a test row that a fit
# serves with ``data.test_targets``: transductive); scored nowhere either.
TAUGHT = -3


class FrameDataset(Dataset):
    """Some ``rows`` of a feature matrix (all by default), served a whole batch per call.

    ``__getitems__`` lets the DataLoader fetch a batch with one fancy-indexing read of the
    memory map instead of one call per row and a collate. Each item is ``(features,
    label)``, or ``(features, row id)`` when there are no labels, so that predictions made
    on several processes can be put back in file order. With ``ids_only`` it serves just
    the row ids, for features that already sit on the accelerator
    (:class:`timit_lit.data.device_batches.FeaturesOnDevice`). ``row_space`` says what its
    row ids are (:class:`~timit_lit.data.row_space.RowSpace`), for what scores its rows.
    """

    def __init__(
        self,
        features,
        labels: Optional[np.ndarray],
        rows: Optional[np.ndarray] = None,
        ids_only: bool = False,
        row_space: Optional[RowSpace] = None,
    ):
        self.row_space = row_space
        self.features = features  # a feature matrix, or ContextWindows: anything indexed by rows
        self.labels = labels
        self.rows = torch.as_tensor(np.arange(len(features)) if rows is None else rows, dtype=torch.int64)
        self.ids_only = ids_only

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, indices: list[int]):
        rows = self.rows[indices]
        if self.ids_only:
            return rows
        x = torch.from_numpy(self.features[rows.numpy()])
        y = torch.from_numpy(self.labels[rows.numpy()]) if self.labels is not None else rows
        return x, y

    def __getitem__(self, index: int):
        batch = self.__getitems__([index])
        return batch[0] if self.ids_only else (batch[0][0], batch[1][0])


class UtteranceDataset(Dataset):
    """Whole utterances of a ``timit_11`` file, for sequence models: each item is one
    stretch of consecutive ``rows`` inside one utterance (a whole utterance, unless the
    rows leave part of it out), a batch of them served per call, zero-padded to the longest.

    A batch is ``(features, targets, lengths)``: ``utterances x frames x features``,
    ``utterances x frames`` (labels, or row ids when there are no labels, so predictions
    find their place in the file; -1 in the padding, :data:`UNLABELLED` at frames whose label
    the split does not score: test rows and held-out labels inside an utterance, which stay
    in the input; :data:`TAUGHT` at test rows that learn a teacher's posteriors) and each
    utterance's real length; with ``teacher`` (class posteriors by row id:
    ``data.soft_targets``, ``data.test_targets``) a fourth part, ``utterances x frames x
    classes``, zeros in the padding.
    ``rows`` and ``labels`` are those of :class:`FrameDataset`: the frames served, in order;
    the utterances are those of ``row_space``.
    """

    def __init__(self, features, labels: Optional[np.ndarray], rows: np.ndarray, row_space: RowSpace,
                 teacher: Optional[np.ndarray] = None):
        self.row_space = row_space
        self.features = features  # a feature matrix or ContextWindows, indexed by row ids
        self.labels = labels
        self.teacher = teacher
        self.rows = torch.as_tensor(rows, dtype=torch.int64)
        # Utterance i is self.rows[offsets[i]:offsets[i+1]].
        self.offsets = row_space.segments(rows) if len(rows) else np.zeros(1, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitems__(self, indices: list[int]):
        spans = [(int(self.offsets[i]), int(self.offsets[i + 1])) for i in indices]
        lengths = torch.tensor([stop - start for start, stop in spans], dtype=torch.int64)
        width = self.features.shape[1] if isinstance(self.features, np.ndarray) else self.features.width_features
        x = torch.zeros(len(spans), int(lengths.max()), width)
        y = torch.full((len(spans), int(lengths.max())), -1, dtype=torch.int64)
        soft = torch.zeros(len(spans), int(lengths.max()), self.teacher.shape[1]) if self.teacher is not None else None
        for i, (start, stop) in enumerate(spans):
            rows = self.rows[start:stop].numpy()
            x[i, : stop - start] = torch.from_numpy(np.asarray(self.features[rows]))
            y[i, : stop - start] = torch.from_numpy(self.labels[rows]) if self.labels is not None else self.rows[start:stop]
            if soft is not None:
                soft[i, : stop - start] = torch.from_numpy(np.asarray(self.teacher[rows], dtype=np.float32))
        return (x, y, lengths) if soft is None else (x, y, lengths, soft)

    def __getitem__(self, index: int):
        return tuple(part[0] for part in self.__getitems__([index]))


def keep_batch(batch):
    """Collate for :class:`FrameDataset`: its ``__getitems__`` already returns a batch."""
    return batch

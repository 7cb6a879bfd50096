"""The rows a split's row ids number: which file each row sits in, their utterances, and the labels given for training.

A dataset serves rows by id. Where the run reads no utterances, or the folder's utterances
are runs of one file's rows (the course's files), the ids are the rows of one file in its
order. Where it reads utterances and they are not (MLE-bench's shuffled split), the ids
number all the folder's files' rows together, in utterance order
(:class:`~timit_lit.data.row_links.RowsInUtteranceOrder`). The data module builds one
:class:`RowSpace` for each stage it sets up and hands it to every dataset it serves
(``dataset.row_space``); decoding, the scores, the figures and the CSV writer ask it, and
nothing else, where a row's utterance, file and given label are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from timit_lit.data.row_links import Utterances
from timit_lit.errors import InputError

# Below this mean length (rows per recovered utterance) the rows form no utterances to speak of.
MIN_MEAN_UTTERANCE = 3.0


def segment_offsets(rows: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Utterance offsets of the sorted row ids ``rows`` of rows whose utterances start at
    ``starts``: a new segment wherever the utterance changes or rows are skipped."""
    rows = np.asarray(rows)
    utterance = np.searchsorted(starts, rows, side="right") - 1
    breaks = np.flatnonzero((np.diff(utterance) != 0) | (np.diff(rows) != 1)) + 1
    return np.concatenate([[0], breaks, [len(rows)]]).astype(np.int64)


def require_utterances(found: Utterances, folder: Path, needed_by: str) -> None:
    """Stop (InputError) where ``needed_by`` needs utterances and the rows form none."""
    mean = len(found.order) / max(len(found), 1)
    if mean < MIN_MEAN_UTTERANCE:
        raise InputError(f"{folder}: {needed_by} needs utterances, but its rows form none: {len(found):,} "
                         f"'utterances' of {mean:.1f} rows on average among {len(found.order):,} rows (no row's last "
                         f"10 frames are another's first 10)")


def known_starts(dataset) -> Optional[np.ndarray]:
    """The utterance starts of ``dataset``'s row space, or None where they cannot be told: rows
    that are not spliced frames, one file's rows that are not in time order, or a dataset
    without a row space."""
    space = getattr(dataset, "row_space", None)
    try:
        return space.starts if space is not None else None
    except ValueError:  # (InputError included)
        return None


@dataclass(frozen=True, eq=False)
class RowSpace:
    """The row ids of the datasets of one stage.

    Attributes:
        folder: the data folder (named in messages).
        files: its feature files, in the order their rows are numbered together.
        file: the file whose rows the stage is for (``train_11.npy`` for fit, ``test_11.npy``
            for test, the data's ``predict_file`` for predict): its rows are the ones scored or written.
        in_utterance_order: True: the ids number all ``files``' rows together in utterance
            order; False: they are ``file``'s rows, in its order.
        n_rows: how many rows the ids number.
        given_labels: the labels given for training, by row id (-1 where none), that decoding
            may take as known (``decoding.known_labels``); None where none shares these rows.
        folder_utterances: the folder's utterances, recovered by the data module when first asked
            (once per data module); not carried into DataLoader workers, which never ask.
    """

    folder: Path
    files: tuple[str, ...]
    file: str
    in_utterance_order: bool
    n_rows: int
    given_labels: Optional[np.ndarray] = None
    folder_utterances: Optional[Callable[[], Utterances]] = field(default=None, repr=False)

    @classmethod
    def in_time_order(cls, starts: np.ndarray, file: str = "rows") -> "RowSpace":
        """The rows of one file in time order whose utterances start at ``starts`` (known already)."""
        starts = np.asarray(starts, dtype=np.int64)
        n_rows = int(starts[-1])
        found = Utterances(np.arange(n_rows, dtype=np.int64), starts, np.array([0, n_rows], dtype=np.int64))
        return cls(Path("."), (file,), file, False, n_rows, None, lambda: found)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "folder_utterances": None}

    @cached_property
    def utterances(self) -> Utterances:
        """The folder's utterances (:func:`~timit_lit.data.row_links.recover_utterances`)."""
        if self.folder_utterances is None:
            raise RuntimeError("this copy of the row space (a DataLoader worker's) cannot recover utterances")
        return self.folder_utterances()

    def require_utterances(self, needed_by: str) -> None:
        """Stop (InputError) where ``needed_by`` needs utterances and the rows form none."""
        require_utterances(self.utterances, self.folder, needed_by)

    @cached_property
    def starts(self) -> np.ndarray:
        """Where the utterances of these rows start, ending with the number of rows. A
        ValueError where rows are not spliced frames; an InputError where ``file``'s rows are
        not in time order (its utterances exist only in utterance order)."""
        found = self.utterances
        if self.in_utterance_order:
            return found.offsets
        if not found.in_file_order:
            raise InputError(f"{self.folder / self.file}: its rows are not in time order; its utterances exist only "
                             f"with all files' rows in utterance order")
        first, stop = self._file_range(self.file)
        inside = found.offsets[(found.offsets >= first) & (found.offsets <= stop)]
        return (inside - first).astype(np.int64)

    @cached_property
    def utterance(self) -> np.ndarray:
        """The utterance of each row id (an index into :attr:`starts`)."""
        return np.repeat(np.arange(len(self.starts) - 1), np.diff(self.starts))

    def segments(self, rows: np.ndarray) -> np.ndarray:
        """The segments of the sorted row ids ``rows``: their utterances, cut where rows are
        missing (a split's cuts, unscored rows), so that consecutive ids in a segment are
        consecutive frames."""
        return segment_offsets(np.asarray(rows), self.starts)

    def in_utterances(self, rows: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``values`` (one per sorted row id of ``rows``) in utterance order, and their
        segments' offsets: :meth:`segments`, except that the rows of one file whose utterances
        run across re-ordered files are put in utterance order first."""
        rows, values = np.asarray(rows), np.asarray(values)
        if self.in_utterance_order or self.utterances.in_file_order:
            return values, self.segments(rows)
        found = self.utterances
        positions = self._utterance_positions()[self._file_range(self.file)[0] + rows]
        order = np.argsort(positions)
        return values[order], segment_offsets(positions[order], found.offsets)

    def positions(self, file: str) -> np.ndarray:
        """The row id of each row of ``file``, in its order."""
        if not self.in_utterance_order:
            if file != self.file:
                raise ValueError(f"these are the rows of {self.file}, not of {file}")
            return np.arange(self.n_rows)
        first, stop = self._file_range(file)
        return self._utterance_positions()[first:stop]

    def by_row_id(self, file: str, values: np.ndarray, fill) -> np.ndarray:
        """``values`` (one per row of ``file``, in its order) by row id; ``fill`` at the rows of other files."""
        out = np.full((self.n_rows, *values.shape[1:]), fill, dtype=values.dtype)
        out[self.positions(file)] = values
        return out

    def file_row_ids(self, rows: np.ndarray) -> np.ndarray:
        """The row of ``file`` of each of ``rows`` (row ids), -1 for a row of another file."""
        rows = np.asarray(rows, dtype=np.int64)
        if not self.in_utterance_order:
            return rows
        combined = self.utterances.order[rows]
        first, stop = self._file_range(self.file)
        return np.where((combined >= first) & (combined < stop), combined - first, -1)

    def _file_range(self, file: str) -> tuple[int, int]:
        """Where ``file``'s rows are in the ids of all files together (file by file)."""
        f = self.files.index(file)
        file_starts = self.utterances.file_starts
        return int(file_starts[f]), int(file_starts[f + 1])

    def _utterance_positions(self) -> np.ndarray:
        """For each row of all files together (file by file), its place in utterance order."""
        order = self.utterances.order
        position = np.empty(len(order), dtype=np.int64)
        position[order] = np.arange(len(order))
        return position

"""Utterances of rows in any order, across several files: each row linked to the one that follows it.

Row ``b`` follows row ``a`` exactly when ``a``'s last 10 frames are, bit for bit, ``b``'s
first 10. :func:`timit_lit.data.utterances.utterance_starts` tests that for neighbouring rows of one file in time
order. :func:`recover_utterances` takes rows in any order, spread over several files
(MLE-bench's split shuffles the course's training rows into a training and a test file):
every row's tail is matched with every row's head, in all files at once.

How: each row's head (its first 10 frames) and tail (its last 10) are hashed to 64 bits
from their raw bytes (integer arithmetic, so equal bits give equal hashes at any column
offset, which a float dot product would not promise), chunk by chunk from the memory maps.
Sorting all heads' and tails' hashes together puts the rows that share an overlap side by
side. A link ``a -> b`` is kept only if it is unique both ways (no other head has ``a``'s
tail, no other tail has ``b``'s head), then confirmed by comparing the two rows' bits; a
row does not follow itself. A tail or head shared by several rows is a boundary, never a
guess. Two different overlaps with
the same 64-bit hash (unlikely at the course's size) would make a
link look ambiguous: a boundary too, never a wrong link. Rows that close a loop (``a -> b
-> ... -> a``: possible only for rows of constant frames) have no first row: each is an
utterance of its own, as are rows linked to nothing.

The result, :class:`Utterances`, is a permutation of the combined row ids (file 0's rows,
then file 1's, ...) in utterance order, with offsets; utterances are ordered by their first
row. On files whose rows are in time order it is exactly what
:func:`~timit_lit.data.utterances.utterance_starts` finds, file by file, with ``order`` the identity. :class:`RowsInUtteranceOrder` reads the
files' rows in that order, as one matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from timit_lit.data.files import FRAME_DIMS
from timit_lit.data.utterances import CHUNK_ROWS

CONFIRM_ROWS = 32768  # candidate links confirmed per batch of reads


@dataclass(frozen=True)
class Utterances:
    """Utterances over the combined rows of several files.

    ``order``: every combined row id once, utterance by utterance, each utterance's rows in
    time order; utterance ``u`` is ``order[offsets[u]:offsets[u+1]]``. ``file_starts``:
    where each file's rows begin in the combined ids, ending with the total.
    """

    order: np.ndarray
    offsets: np.ndarray
    file_starts: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def in_file_order(self) -> bool:
        """Whether every utterance is a run of consecutive rows of one file (the course's files)."""
        return bool(np.array_equal(self.order, np.arange(len(self.order))) and np.isin(self.file_starts, self.offsets).all())

    def utterance_of(self) -> np.ndarray:
        """The utterance of each combined row id."""
        out = np.empty(len(self.order), dtype=np.int64)
        out[self.order] = np.repeat(np.arange(len(self)), self.lengths)
        return out


def _check_files(files: Sequence[np.ndarray]) -> tuple[int, np.dtype]:
    """Frames per row, and the common dtype, of feature matrices that can be linked together."""
    if not files:
        raise ValueError("no feature files to link")
    first = files[0]
    for features in files:
        if features.ndim != 2 or features.shape[1] % FRAME_DIMS or features.shape[1] < 2 * FRAME_DIMS:
            raise ValueError(f"features must be rows x (frames x {FRAME_DIMS}), 2 frames or more, got shape {features.shape}")
        if features.dtype not in (np.float32, np.float64):
            raise ValueError(f"features must be float32 or float64, got {features.dtype}")
        if features.shape[1] != first.shape[1] or features.dtype != first.dtype:
            raise ValueError(f"files to link must share width and dtype: {first.shape[1]} {first.dtype} "
                             f"and {features.shape[1]} {features.dtype}")
    return first.shape[1] // FRAME_DIMS, first.dtype


def overlap_hashes(features: np.ndarray, chunk_rows: int = CHUNK_ROWS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of each row's head (all frames but the last) and tail (all but the first).

    Each frame's 32-bit words are summed with random odd 64-bit coefficients (mod 2^64),
    then the frames' hashes with coefficients by position in the overlap: a head and a
    tail holding the same bits get the same hash. Reads ``chunk_rows`` rows at a time.
    """
    n_frames, dtype = _check_files([features])
    words = FRAME_DIMS * dtype.itemsize // 4
    rng = np.random.default_rng(seed)
    word_coefficients = rng.integers(0, 2**63, size=words, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    frame_coefficients = rng.integers(0, 2**63, size=n_frames - 1, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    heads = np.empty(len(features), dtype=np.uint64)
    tails = np.empty(len(features), dtype=np.uint64)
    for first in range(0, len(features), chunk_rows):
        block = np.ascontiguousarray(features[first : first + chunk_rows]).view(np.uint32)
        frames = np.einsum("rfw,w->rf", block.reshape(len(block), n_frames, words), word_coefficients)
        heads[first : first + len(block)] = frames[:, :-1] @ frame_coefficients
        tails[first : first + len(block)] = frames[:, 1:] @ frame_coefficients
    return heads, tails


def _confirm(files: Sequence[np.ndarray], file_starts: np.ndarray, tails_of: np.ndarray, heads_of: np.ndarray,
             batch: int = CONFIRM_ROWS) -> np.ndarray:
    """Which candidate links ``tails_of[i] -> heads_of[i]`` (combined row ids) hold bit for bit."""
    bits = np.dtype(f"u{files[0].dtype.itemsize}")
    holds = np.zeros(len(tails_of), dtype=bool)
    file_a = np.searchsorted(file_starts, tails_of, side="right") - 1
    file_b = np.searchsorted(file_starts, heads_of, side="right") - 1
    for fa, features_a in enumerate(files):
        for fb, features_b in enumerate(files):
            pairs = np.flatnonzero((file_a == fa) & (file_b == fb))
            for first in range(0, len(pairs), batch):
                some = pairs[first : first + batch]
                a = np.take(features_a, tails_of[some] - file_starts[fa], axis=0).view(bits)
                b = np.take(features_b, heads_of[some] - file_starts[fb], axis=0).view(bits)
                holds[some] = (a[:, FRAME_DIMS:] == b[:, :-FRAME_DIMS]).all(axis=1)
    return holds


def row_links(files: Sequence[np.ndarray], chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """For every combined row id, the row that follows it (-1: none, or not unique)."""
    _check_files(files)
    file_starts = np.concatenate([[0], np.cumsum([len(f) for f in files])]).astype(np.int64)
    n = int(file_starts[-1])
    hashes = [overlap_hashes(features, chunk_rows) for features in files]
    # Heads (ids 0..n-1) and tails (ids n..2n-1) sorted together: rows sharing an overlap's hash are neighbours.
    keys = np.concatenate([h for h, _ in hashes] + [t for _, t in hashes])
    del hashes
    by_key = np.argsort(keys, kind="stable")  # within a group, heads before tails
    keys = keys[by_key]
    group_starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1], [True]]))
    del keys
    # Unique both ways: a group of exactly one head and one tail.
    pair = group_starts[:-1][np.diff(group_starts) == 2]
    b, a = by_key[pair], by_key[pair + 1] - n
    del by_key
    keep = (b < n) & (a >= 0) & (a != b)  # one of each (not two heads or two tails), not a row on itself
    a, b = a[keep], b[keep]
    holds = _confirm(files, file_starts, a, b)
    following = np.full(n, -1, dtype=np.int64)
    following[a[holds]] = b[holds]
    return following


def chains(following: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(order, offsets)`` of the chains that unique links ``following`` (row -> next row
    or -1; each row followed by at most one) form, ordered by their first row. Rows on a
    loop are chains of one row each."""
    n = len(following)
    preceding = np.full(n, -1, dtype=np.int64)
    linked = np.flatnonzero(following >= 0)
    preceding[following[linked]] = linked
    # Pointer jumping: first[i] is an ancestor of i, depth[i] its distance; done when it is a chain's first row.
    ids = np.arange(n, dtype=np.int64)
    first = np.where(preceding >= 0, preceding, ids)
    depth = (preceding >= 0).astype(np.int64)
    done = preceding[first] < 0
    for _ in range(max(1, int(np.ceil(np.log2(max(n, 2))))) + 1):
        todo = np.flatnonzero(~done)
        if len(todo) == 0:
            break
        up = first[todo]
        first[todo], depth[todo], done[todo] = first[up], depth[todo] + depth[up], done[up]
    looped = ~done  # after log2(n) + 1 doublings only rows on a loop have not reached a first row
    first[looped], depth[looped] = ids[looped], 0
    order = np.lexsort((depth, first))
    heads = first[order]
    offsets = np.concatenate([[0], np.flatnonzero(heads[1:] != heads[:-1]) + 1, [n]]).astype(np.int64)
    return order.astype(np.int64), offsets if n else np.zeros(1, dtype=np.int64)


def recover_utterances(files: Sequence[np.ndarray], chunk_rows: int = CHUNK_ROWS) -> Utterances:
    """The utterances of the rows of ``files`` (feature matrices, e.g. float32 memory maps, in
    any row order), linked across all files together; see the module docstring."""
    following = row_links(files, chunk_rows)
    order, offsets = chains(following)
    file_starts = np.concatenate([[0], np.cumsum([len(f) for f in files])]).astype(np.int64)
    return Utterances(order, offsets, file_starts)


class RowsInUtteranceOrder:
    """The rows of several files read as one matrix in utterance order: row ``i`` is combined
    row ``utterances.order[i]``, so each utterance is a run of consecutive rows, as in the
    course's own files, and everything that works on a file's rows and utterance starts works
    here with ``utterances.offsets`` as the starts. Indexed like a 2-D array (row ids, slices,
    or ``(rows, columns)``); nothing is copied until rows are read."""

    def __init__(self, files: Sequence[np.ndarray], utterances: Utterances):
        _check_files(files)
        self.files, self.utterances = list(files), utterances
        self.shape = (len(utterances.order), files[0].shape[1])
        self.dtype, self.ndim = files[0].dtype, 2
        self.width_features = files[0].shape[1]

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        rows, columns = key if isinstance(key, tuple) else (key, slice(None))
        if isinstance(rows, slice):
            rows = np.arange(*rows.indices(len(self)))
        ids = self.utterances.order[np.asarray(rows)]
        out = np.empty((len(ids), self.shape[1]), dtype=self.dtype)
        file_of = np.searchsorted(self.utterances.file_starts, ids, side="right") - 1
        for f, features in enumerate(self.files):
            here = np.flatnonzero(file_of == f)
            if len(here):
                out[here] = features[ids[here] - self.utterances.file_starts[f]]
        return out[:, columns]

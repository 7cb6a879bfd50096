"""Utterances recovered from a ``timit_11`` file, and context windows rebuilt inside them.

The course's rows are consecutive 10 ms frames of whole utterances, back to back, with
no marks between them. Row ``t`` holds frames ``t-5 .. t+5`` (11 x 39 features), its
centre frame labelled. So inside an utterance, row ``t+1`` without its last frame is
exactly row ``t`` without its first frame (the same float values), and where that fails
a new utterance begins. That is the whole method: no labels, no thresholds.

The frames beyond an utterance's first and last rows are of two kinds: copies of the edge
frame where the file was spliced with edge padding (:func:`timit_lit.synthetic.splice`),
real frames where leading and trailing silence was cut after splicing (the real-speech
replica, and so presumably the course files). The test holds for both: it compares whole
rows, not padding.

Where it could be wrong: it misses a boundary only where the last row of one utterance
and the first row of the next overlap like neighbours, 10 frames of 39 values equal bit
for bit; the rows are then exactly those of one continuous utterance and no method could
tell. With real or generated features (continuous values, deltas) it does not happen. It
never finds a boundary that is not there: copying a frame copies its bits, so the test
compares bits (NaN and -0.0 included). Utterances of any length, one row included, are found.

Boundaries are returned as ``starts``: int64 offsets, one per utterance and a last one
equal to the number of rows (utterance ``i`` is rows ``starts[i]:starts[i+1]``). The data
module recovers them once per file and keeps them (``TimitDataModule.utterance_starts``);
how long recovery takes is in docs/sequence-models.md.

:func:`windows` rebuilds, for a batch of rows, the window of any odd width from the frames
of each row's own utterance, repeating its first or last frame beyond its edges, so a
31-frame window of the course data is never held whole.

Rows in any order, across several files (:func:`recover_utterances`)
-----------------------------------------------------------------------

Row ``b`` follows row ``a`` exactly when ``a``'s last 10 frames are, bit for bit, ``b``'s
first 10. :func:`utterance_starts` tests that for neighbouring rows of one file in time
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
the same 64-bit hash (about one chance in 10^7 for the course's 1.7 M rows) would make a
link look ambiguous: a boundary too, never a wrong link. Rows that close a loop (``a -> b
-> ... -> a``: possible only for rows of constant frames) have no first row: each is an
utterance of its own, as are rows linked to nothing.

The result, :class:`Utterances`, is a permutation of the combined row ids (file 0's rows,
then file 1's, ...) in utterance order, with offsets; utterances are ordered by their first
row. On files whose rows are in time order it is exactly what :func:`utterance_starts`
finds, file by file, with ``order`` the identity. :class:`RowsInUtteranceOrder` reads the
files' rows in that order, as one matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from timit_lit.data.files import FRAME_DIMS

CHUNK_ROWS = 65536  # ~110 MB of float32 rows per read of a memory map


def _check_rows(features: np.ndarray) -> int:
    """The number of context frames on each side of the centre frame of a row."""
    if features.ndim != 2 or features.shape[1] % (2 * FRAME_DIMS) != FRAME_DIMS or features.shape[1] < 3 * FRAME_DIMS:
        raise ValueError(f"features must be rows x (frames x {FRAME_DIMS}), an odd number of frames >= 3, "
                         f"got shape {features.shape}")
    if not np.issubdtype(features.dtype, np.floating):
        raise ValueError(f"features must be floating point, got dtype {features.dtype}")
    return features.shape[1] // FRAME_DIMS // 2


def utterance_starts(features: np.ndarray, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """Offsets of the utterances in ``features`` (rows in time order), ending with the number of rows.

    ``features`` may be a memory map of any size: it is read ``chunk_rows`` rows at a time
    (each chunk re-reads the last row of the one before, so a boundary at a chunk edge is
    seen like any other).
    """
    _check_rows(features)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    n_rows = len(features)
    bits = np.dtype(f"u{features.dtype.itemsize}")  # compare bits: copies of a frame are bit-identical
    starts = [np.zeros(min(n_rows, 1), dtype=np.int64)]  # row 0 starts the first utterance
    for first in range(1, n_rows, chunk_rows):  # pairs of rows (r-1, r) for r in first .. last-1
        last = min(first + chunk_rows, n_rows)
        block = np.ascontiguousarray(features[first - 1 : last]).view(bits)
        continues = (block[:-1, FRAME_DIMS:] == block[1:, :-FRAME_DIMS]).all(axis=1)
        starts.append(first + np.flatnonzero(~continues))
    starts.append(np.array([n_rows]))
    return np.concatenate(starts).astype(np.int64)


def segment_offsets(rows: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Utterance offsets of the sorted row ids ``rows`` of a file whose utterances start at
    ``starts``: a new segment wherever the utterance changes or rows are skipped."""
    rows = np.asarray(rows)
    utterance = np.searchsorted(starts, rows, side="right") - 1
    breaks = np.flatnonzero((np.diff(utterance) != 0) | (np.diff(rows) != 1)) + 1
    return np.concatenate([[0], breaks, [len(rows)]]).astype(np.int64)


def centre_frames(features: np.ndarray, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """The labelled (centre) frame of every row, ``(rows, 39)``, read chunk by chunk from a memory map."""
    context = _check_rows(features)
    centre = slice(context * FRAME_DIMS, (context + 1) * FRAME_DIMS)
    out = np.empty((len(features), FRAME_DIMS), dtype=features.dtype)
    for first in range(0, len(features), chunk_rows):
        out[first : first + chunk_rows] = features[first : first + chunk_rows, centre]
    return out


def utterance_frames(features: np.ndarray, starts: np.ndarray, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """Every frame the rows hold, utterance by utterance: ``(rows + 10 * utterances, 39)``.

    Utterance ``u`` is its first row's 5 left-context frames, the centre frames of its
    rows, then its last row's 5 right-context frames. These are what :func:`windows`
    reads; with them, windows of width 11 are the file's own rows whatever the padding.
    """
    context = _check_rows(features)
    n_utterances = len(starts) - 1
    lengths = np.diff(starts)
    # Where utterance u begins in the output: its rows, plus 2 * context frames per utterance before it.
    begins = starts[:-1] + 2 * context * np.arange(n_utterances)
    out = np.empty((len(features) + 2 * context * n_utterances, FRAME_DIMS), dtype=features.dtype)
    out[np.arange(len(features)) + np.repeat(begins - starts[:-1] + context, lengths)] = centre_frames(features, chunk_rows)
    edge = np.arange(context)
    first_rows = np.asarray(features[starts[:-1]]).reshape(n_utterances, 2 * context + 1, FRAME_DIMS)
    last_rows = np.asarray(features[starts[1:] - 1]).reshape(n_utterances, 2 * context + 1, FRAME_DIMS)
    out[begins[:, None] + edge] = first_rows[:, :context]
    out[(begins + context + lengths)[:, None] + edge] = last_rows[:, context + 1 :]
    return out


def _half_width(width: int) -> int:
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1 or width % 2 == 0:
        raise ValueError(f"context width must be an odd number of frames (1, 11, 21, 31, ...), got {width!r}")
    return int(width) // 2


def _edge_frames(n_frames: int, n_rows: int, n_utterances: int) -> int:
    """How many frames ``frames`` holds beyond each edge of each utterance (5, or 0 for centre frames)."""
    extra = n_frames - n_rows
    if n_utterances == 0 or extra < 0 or extra % (2 * n_utterances):
        raise ValueError(f"{n_frames} frames do not fit {n_utterances} utterances of {n_rows} rows "
                         "(pass centre_frames() or utterance_frames() of the same file as its starts)")
    return extra // (2 * n_utterances)


def windows(frames: np.ndarray, starts: np.ndarray, rows: np.ndarray, width: int) -> np.ndarray:
    """Windows of ``width`` frames centred on each of ``rows``: ``(len(rows), width * 39)``.

    ``frames`` is :func:`utterance_frames` (windows of width 11 are then the file's rows)
    or :func:`centre_frames` (the rows' context frames beyond the utterance are then not
    used). Frames beyond the ones known of an utterance repeat its first or last frame;
    no window reaches into another utterance.
    """
    half = _half_width(width)
    rows = np.asarray(rows, dtype=np.int64)
    n_rows = int(starts[-1])
    if len(rows) and (rows.min() < 0 or rows.max() >= n_rows):
        raise IndexError(f"rows must lie in 0 .. {n_rows - 1}, got {rows.min()} .. {rows.max()}")
    edge = _edge_frames(len(frames), n_rows, len(starts) - 1)
    utterance = np.searchsorted(starts, rows, side="right") - 1
    shift = edge * (2 * utterance + 1)  # row t's centre frame is frames[t + shift]
    first = starts[utterance] + shift - edge
    last = starts[utterance + 1] + shift + edge - 1
    index = np.clip((rows + shift)[:, None] + np.arange(-half, half + 1), first[:, None], last[:, None])
    return frames[index].reshape(len(rows), width * frames.shape[1])


def windows_torch(frames: torch.Tensor, starts: torch.Tensor, rows: torch.Tensor, width: int,
                  n_rows: Optional[int] = None) -> torch.Tensor:
    """:func:`windows` on tensors (all on one device, e.g. the GPU): the same index arithmetic.

    ``rows`` are not range-checked here (that would wait for the GPU); pass valid ones.
    ``n_rows`` (``starts[-1]``, known on the host) spares a read of the device per call.
    """
    half = _half_width(width)
    edge = _edge_frames(len(frames), int(starts[-1]) if n_rows is None else n_rows, len(starts) - 1)
    rows = rows.to(torch.int64)
    utterance = torch.searchsorted(starts, rows, right=True) - 1
    shift = edge * (2 * utterance + 1)
    first = starts[utterance] + shift - edge
    last = starts[utterance + 1] + shift + edge - 1
    offsets = (rows + shift)[:, None] + torch.arange(-half, half + 1, device=rows.device)
    index = torch.clamp(offsets, first[:, None], last[:, None])
    return frames[index].reshape(len(rows), width * frames.shape[1])


class ContextWindows:
    """The rows of a ``timit_11`` file rebuilt as windows of ``width`` frames: indexed by row
    ids like the feature matrix itself, built per batch from each utterance's frames (see
    :mod:`timit_lit.data.utterances`), never across an utterance boundary, never materialised."""

    def __init__(self, features: np.ndarray, width: int, starts: Optional[np.ndarray] = None):
        self.starts = utterance_starts(features) if starts is None else starts
        self.frames = utterance_frames(features, self.starts)
        self.width = width
        self.width_features = width * self.frames.shape[1]

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        return windows(self.frames, self.starts, rows, self.width)

    def to(self, device: torch.device) -> "_DeviceWindows":
        return _DeviceWindows(torch.from_numpy(self.frames).to(device), torch.from_numpy(self.starts).to(device), self.width,
                              len(self))


class _DeviceWindows:
    """:class:`ContextWindows` with its frames on the accelerator (and its row count on the host)."""

    def __init__(self, frames: torch.Tensor, starts: torch.Tensor, width: int, n_rows: int):
        self.frames, self.starts, self.width, self.is_cuda = frames, starts, width, frames.is_cuda
        self.n_rows = n_rows

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        return windows_torch(self.frames, self.starts, rows, self.width, self.n_rows)


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

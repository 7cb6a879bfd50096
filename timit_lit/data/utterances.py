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
module recovers a folder's utterances once, across all its files
(:func:`timit_lit.data.row_links.recover_utterances`), and hands them to the datasets in their
row space (:class:`timit_lit.data.row_space.RowSpace`); how long recovery takes is in
docs/sequence-models.md.

:func:`windows` rebuilds, for a batch of rows, the window of any odd width from the frames
of each row's own utterance, repeating its first or last frame beyond its edges, so a
wide window of the course data is never held whole.

Rows in any order, across several files, are linked into utterances by
:mod:`timit_lit.data.row_links`.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from timit_lit.data.files import FRAME_DIMS

CHUNK_ROWS = 65536  # rows per read of a memory map


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

"""Utterance recovery from the overlap of rows, and context windows that stay inside utterances."""

import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from timit_lit.data.utterances import centre_frames, utterance_frames, utterance_starts, windows, windows_torch
from timit_lit.synthetic import splice, write_synthetic_timit

from helpers import SHARED

# One-row and two-row utterances between longer ones, and back to back; lengths 3-5, where
# edge padding fills most of each row.
HAND_MADE_LENGTHS = [7, 1, 12, 2, 9, 1, 1, 3, 2, 1, 4, 5, 30, 2]


def hand_made(lengths, dtype, cut_edges=False, seed=0):
    """Rows of utterances of the given lengths: random frames spliced with edge padding, or, with
    ``cut_edges``, spliced first and then cut to the given lengths, so that edge rows hold real
    context frames (as in the real-speech replica, whose silences were cut after splicing)."""
    rng = np.random.default_rng(seed)
    cut = 5 if cut_edges else 0
    return np.vstack([splice(rng.normal(size=(n + 2 * cut, 39)))[cut : cut + n] for n in lengths]).astype(dtype)


def offsets(lengths):
    return np.concatenate([[0], np.cumsum(lengths)])


@pytest.fixture(scope="module", params=["float32", "float64"])
def generated(request, tmp_path_factory):
    """A generated data set (train and test splits, memory-mapped) and its utterance lengths."""
    out = tmp_path_factory.mktemp(f"timit_{request.param}")
    lengths = write_synthetic_timit(out, train_utterances=20, test_utterances=8, seed=3, dtype=request.param,
                                    min_phones=1, max_phones=6)
    return out, lengths


@pytest.mark.parametrize("split", ["train", "test"])
def test_recovers_the_generated_utterances(generated, split):
    out, lengths = generated
    features = np.load(out / f"{split}_11.npy", mmap_mode="r")
    starts = utterance_starts(features, chunk_rows=50)  # many chunks
    assert starts.dtype == np.int64
    np.testing.assert_array_equal(starts, offsets(lengths[split]))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cut_edges", [False, True])
@pytest.mark.parametrize("chunk_rows", [1, 3, 7, 10_000])
def test_recovers_utterances_of_one_and_two_rows_across_chunk_edges(dtype, cut_edges, chunk_rows):
    """Chunks of 1 row put every boundary on a chunk edge; 3 and 7 put some on edges, some inside."""
    features = hand_made(HAND_MADE_LENGTHS, dtype, cut_edges)
    np.testing.assert_array_equal(utterance_starts(features, chunk_rows), offsets(HAND_MADE_LENGTHS))


def test_a_file_of_one_utterance_and_of_one_row():
    np.testing.assert_array_equal(utterance_starts(hand_made([40], "float32"), 8), [0, 40])
    np.testing.assert_array_equal(utterance_starts(hand_made([1], "float32")), [0, 1])


def test_rejects_rows_that_are_not_spliced_frames():
    with pytest.raises(ValueError, match="frames x 39"):
        utterance_starts(np.zeros((5, 430), np.float32))


def test_centre_frames_are_the_labelled_frames(generated):
    out, _ = generated
    features = np.load(out / "train_11.npy", mmap_mode="r")
    centre = centre_frames(features, chunk_rows=64)
    assert centre.dtype == features.dtype
    np.testing.assert_array_equal(centre, features[:, 5 * 39 : 6 * 39])


def test_windows_of_width_11_are_the_original_rows(generated):
    out, _ = generated
    for split in ("train", "test"):
        features = np.load(out / f"{split}_11.npy", mmap_mode="r")
        starts = utterance_starts(features)
        rows = np.arange(len(features))
        np.testing.assert_array_equal(windows(utterance_frames(features, starts), starts, rows, 11), features)
        # Edge-padded rows: the centre frames alone rebuild them too.
        np.testing.assert_array_equal(windows(centre_frames(features), starts, rows, 11), features)


def test_windows_of_width_11_keep_the_real_context_of_cut_edges():
    features = hand_made(HAND_MADE_LENGTHS, "float32", cut_edges=True)
    starts, rows = utterance_starts(features), np.arange(len(features))
    np.testing.assert_array_equal(windows(utterance_frames(features, starts), starts, rows, 11), features)


@pytest.mark.parametrize("cut_edges", [False, True])
@pytest.mark.parametrize("width", [1, 21, 31])
def test_wide_windows_repeat_edge_frames_and_never_cross_utterances(width, cut_edges):
    lengths = HAND_MADE_LENGTHS
    features = hand_made(lengths, "float32", cut_edges)
    starts = utterance_starts(features)
    frames = utterance_frames(features, starts)
    assert frames.shape == (len(features) + 10 * len(lengths), 39)
    # Reference: each utterance's frames (5 context frames each side) spliced on their own, wider.
    begins = offsets(np.add(lengths, 10))
    expected = np.vstack([splice(frames[a:b], width // 2)[5:-5] for a, b in zip(begins[:-1], begins[1:])])
    rows = np.random.default_rng(0).permutation(len(features))  # a batch in any order
    got = windows(frames, starts, rows, width)
    assert got.shape == (len(rows), width * 39)
    np.testing.assert_array_equal(got, expected[rows])

    # Where each frame comes from: tag every frame with its position, and the centre frames with their row.
    source = windows(np.arange(len(frames), dtype=np.float64)[:, None], starts, rows, width).astype(int)
    utterance_of_frame = np.repeat(np.arange(len(lengths)), np.add(lengths, 10))
    utterance_of_row = np.repeat(np.arange(len(lengths)), lengths)
    assert (utterance_of_frame[source] == utterance_of_row[rows][:, None]).all()
    centre_source = windows(np.arange(len(features), dtype=np.float64)[:, None], starts, rows, width).astype(int)
    assert (centre_source[:, width // 2] == rows).all()
    assert (utterance_of_row[centre_source] == utterance_of_row[rows][:, None]).all()


def test_torch_windows_equal_numpy_windows():
    features = hand_made(HAND_MADE_LENGTHS, "float32", cut_edges=True)
    starts = utterance_starts(features)
    rows = np.array([0, 1, 7, 8, 20, 60, len(features) - 1, 8])
    for frames in (utterance_frames(features, starts), centre_frames(features)):
        got = windows_torch(torch.from_numpy(frames), torch.from_numpy(starts), torch.from_numpy(rows), 21)
        np.testing.assert_array_equal(got.numpy(), windows(frames, starts, rows, 21))


def test_frames_of_another_file_are_rejected():
    starts = utterance_starts(hand_made([3, 4], "float32"))
    with pytest.raises(ValueError, match="do not fit 2 utterances of 7 rows"):
        windows(np.zeros((8, 39)), starts, np.arange(7), 11)


@pytest.mark.parametrize("width", [0, 10, 12, -3, 11.0])
def test_an_even_or_non_integer_width_is_rejected(width):
    centre, starts, rows = np.zeros((4, 39)), np.array([0, 4]), np.arange(4)
    with pytest.raises(ValueError, match="odd number of frames"):
        windows(centre, starts, rows, width)
    with pytest.raises(ValueError, match="odd number of frames"):
        windows_torch(torch.from_numpy(centre), torch.from_numpy(starts), torch.from_numpy(rows), width)


def test_rows_outside_the_file_are_rejected():
    with pytest.raises(IndexError, match="rows must lie in 0 .. 3"):
        windows(np.zeros((4, 39)), np.array([0, 4]), np.array([1, 4]), 11)


TOOL = SHARED / "tools" / "timit_replica.py"


@pytest.mark.skipif(not TOOL.is_file(), reason="../shared/tools/timit_replica.py is not here")
def test_recovers_every_utterance_of_the_real_speech_replica(tmp_path):
    """The full replica (1.9 GB, written in ~13 s): its 3696 training and 400 test utterances."""
    try:
        subprocess.run([sys.executable, str(TOOL), str(tmp_path)], check=True, capture_output=True)
        for split, count in (("train", 3696), ("test", 400)):
            features = np.load(tmp_path / f"{split}_11.npy", mmap_mode="r")
            started = time.perf_counter()
            starts = utterance_starts(features)
            seconds = time.perf_counter() - started
            assert len(starts) - 1 == count and starts[-1] == len(features)
            # Width 11 rebuilds every row, the real context frames at utterance edges included.
            frames = utterance_frames(features, starts)
            for first in range(0, len(features), 65536):
                rows = np.arange(first, min(first + 65536, len(features)))
                np.testing.assert_array_equal(windows(frames, starts, rows, 11), features[rows[0] : rows[-1] + 1])
            print(f"{split}: {count} utterances, {len(features):,} rows, recovered in {seconds:.2f} s")
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)  # do not leave 1.9 GB in pytest's kept folders

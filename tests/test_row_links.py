"""Utterances recovered from rows in any order, across files (timit_lit.data.row_links.recover_utterances)."""

import subprocess
import sys

import numpy as np
import pytest

from timit_lit.data.row_links import Utterances, chains, recover_utterances
from timit_lit.data.utterances import utterance_starts
from timit_lit.synthetic import splice, write_synthetic_timit

from helpers import SHARED
from helpers.shuffled_split import mlebench_split


def as_sets(utterances: Utterances, source_row: np.ndarray) -> list[tuple[int, ...]]:
    """Each utterance as the tuple of its rows' source ids, in its own order; sorted."""
    rows = source_row[utterances.order]
    return sorted(tuple(rows[a:b]) for a, b in zip(utterances.offsets[:-1], utterances.offsets[1:]))


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("ordered")
    write_synthetic_timit(out, train_utterances=40, test_utterances=10, seed=5, min_phones=1, max_phones=12)
    return out


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_ordered_files_give_todays_utterances(generated, dtype):
    train = np.load(generated / "train_11.npy").astype(dtype)
    test = np.load(generated / "test_11.npy").astype(dtype)
    found = recover_utterances([train, test], chunk_rows=97)
    expected = np.concatenate([utterance_starts(train)[:-1], utterance_starts(test) + len(train)])
    assert found.in_file_order
    np.testing.assert_array_equal(found.order, np.arange(len(train) + len(test)))
    np.testing.assert_array_equal(found.offsets, expected)
    np.testing.assert_array_equal(found.file_starts, [0, len(train), len(train) + len(test)])


def test_shuffled_split_recovers_the_ordered_utterances(generated, tmp_path):
    """The issue's procedure: the training file re-split into shuffled train and test files."""
    train_ids, test_ids = mlebench_split(generated, tmp_path)
    files = [np.load(tmp_path / "train_11.npy", mmap_mode="r"), np.load(tmp_path / "test_11.npy", mmap_mode="r")]
    found = recover_utterances(files, chunk_rows=50)
    source_row = np.concatenate([train_ids, test_ids])
    ordered = np.load(generated / "train_11.npy")
    starts = utterance_starts(ordered)
    expected = sorted(tuple(range(a, b)) for a, b in zip(starts[:-1], starts[1:]))
    assert not found.in_file_order
    assert as_sets(found, source_row) == expected
    # Ordered by first row (combined id), each utterance's rows in time order.
    firsts = found.order[found.offsets[:-1]]
    assert np.all(np.diff(firsts) > 0)
    assert found.utterance_of()[found.order].tolist() == np.repeat(np.arange(len(found)), found.lengths).tolist()


def rows_of(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [splice(rng.normal(size=(n, 39))).astype(np.float32) for n in lengths]


def test_rows_linked_to_nothing_are_one_row_utterances():
    a, b, c = rows_of([1, 4, 1])
    found = recover_utterances([np.vstack([a, b[::-1]]), c])
    assert sorted(found.lengths.tolist()) == [1, 1, 4]
    assert found.order[found.offsets[1]:found.offsets[2]].tolist() == [4, 3, 2, 1]  # b, put back in time order


def test_a_tail_shared_by_several_rows_is_a_boundary():
    """Two rows with the same head: the row before them has no successor, and neither has a predecessor."""
    (rows,) = rows_of([6])
    copy = rows[3:4]  # row 3 twice: row 2's tail matches two heads, row 4's head two tails
    found = recover_utterances([np.vstack([rows, copy])])
    assert as_sets(found, np.arange(7)) == [(0, 1, 2), (3,), (4, 5), (6,)]


def test_a_head_shared_by_several_rows_is_a_boundary():
    """A row whose head matches the tails of two rows follows neither."""
    (rows,) = rows_of([5])
    twin = rows[1:2].copy()
    twin[0, :39] += 1.0  # same tail as row 1, another first frame
    found = recover_utterances([np.vstack([rows, twin])])
    assert as_sets(found, np.arange(6)) == [(0, 1), (2, 3, 4), (5,)]


def test_rows_that_close_a_loop_stay_one_row_utterances():
    """Constant frames link a row to itself, alternating ones two rows to each other: no first row, no guess."""
    rng = np.random.default_rng(1)
    f, g = rng.normal(size=(2, 39)).astype(np.float32)
    constant = np.tile(f, 11)[None]
    alternating = np.stack([np.concatenate([(f, g)[i % 2] for i in range(k, k + 11)]) for k in (0, 1)])
    (normal,) = rows_of([3], seed=2)
    found = recover_utterances([np.vstack([constant, alternating, normal])])
    assert as_sets(found, np.arange(6)) == [(0,), (1,), (2,), (3, 4, 5)]


def test_one_bit_differs_no_link():
    (rows,) = rows_of([4])
    rows = rows.copy()
    rows[2, 5] = np.nextafter(rows[2, 5], np.inf)  # row 2's first frame: its head is no longer row 1's tail
    found = recover_utterances([rows])
    assert as_sets(found, np.arange(4)) == [(0, 1), (2, 3)]


def test_chains_follow_links_in_order():
    following = np.array([-1, 4, 0, -1, 3, 6, 5])  # 1 -> 4 -> 3, 2 -> 0, loop 5 <-> 6
    order, offsets = chains(following)
    utterances = [order[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]
    assert utterances == [[1, 4, 3], [2, 0], [5], [6]]


def test_files_must_share_width_and_dtype():
    (rows,) = rows_of([3])
    with pytest.raises(ValueError, match="share width and dtype"):
        recover_utterances([rows, rows.astype(np.float64)])


TOOLS = SHARED / "tools"


@pytest.mark.skipif(not (TOOLS / "mlebench_split.py").is_file(), reason="../shared/tools is not here")
def test_real_speech_mlebench_split_recovers_the_replica_utterances(tmp_path):
    """A replica subset (real TIMIT speech), re-split by ../shared's copy of MLE-bench's procedure."""
    def run(*args):
        return subprocess.run([sys.executable, *map(str, args)], check=True, capture_output=True)

    run(TOOLS / "timit_replica.py", tmp_path / "replica", "--utterances", "120", "--test-utterances", "10")
    run(TOOLS / "mlebench_split.py", tmp_path / "replica", tmp_path / "mlebench")
    files = [np.load(tmp_path / "mlebench" / n, mmap_mode="r") for n in ("train_11.npy", "test_11.npy")]
    found = recover_utterances(files)
    ordered = np.load(tmp_path / "replica" / "train_11.npy", mmap_mode="r")
    n_test = len(files[1])
    permutation = np.random.RandomState(0).permutation(len(ordered))
    source_row = np.concatenate([permutation[n_test:], permutation[:n_test]])
    starts = utterance_starts(ordered)
    assert len(starts) - 1 == 120
    assert as_sets(found, source_row) == sorted(tuple(range(a, b)) for a, b in zip(starts[:-1], starts[1:]))


def test_an_utterance_across_two_files_is_not_in_file_order():
    (rows,) = rows_of([6])
    found = recover_utterances([rows[:4], rows[4:]])
    assert found.order.tolist() == list(range(6)) and found.lengths.tolist() == [6]
    assert not found.in_file_order

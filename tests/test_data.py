"""The data module: split, order, label parsing, dtypes, batching."""

import gc
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from timit_lit.data import FrameDataset, TimitDataModule
from timit_lit.data.files import float32_cache_path, float32_features
from timit_lit.errors import InputError
from timit_lit.synthetic import write_synthetic_timit

from helpers import BASELINE, REPO, copy_data, run_in


def test_contiguous_split_as_in_the_notebook(tiny_data):
    features = np.load(tiny_data / "train_11.npy")
    labels = np.load(tiny_data / "train_label_11.npy").astype(int)
    dm = TimitDataModule(str(tiny_data), val_ratio=0.2)
    dm.setup("fit")
    n_train = int(len(features) * 0.8)
    assert len(dm.train_dataloader().dataset) == n_train and len(dm.val_dataloader().dataset) == len(features) - n_train
    # The first 80% of rows train, the rest validate, in file order.
    x, y = dm.train_dataloader().dataset.__getitems__([0, n_train - 1])
    assert torch.equal(x, torch.from_numpy(features[[0, n_train - 1]])) and y.tolist() == labels[[0, n_train - 1]].tolist()
    x, y = dm.val_dataloader().dataset.__getitems__([0])
    assert torch.equal(x[0], torch.from_numpy(features[n_train])) and y.item() == labels[n_train]
    # Validation batches walk the rows in order.
    batches = list(dm.val_dataloader())
    assert torch.equal(torch.cat([b[1] for b in batches]), torch.from_numpy(labels[n_train:]))


def test_dimensions_come_from_the_data(tiny_data, tmp_path):
    narrow = np.load(tiny_data / "train_11.npy")[:, :39].copy()
    data = copy_data(tiny_data, tmp_path / "d", train_11=narrow, test_11=np.zeros((3, 39), np.float32))
    assert TimitDataModule(str(data)).input_dim == 39
    assert TimitDataModule(str(tiny_data)).input_dim == 429


def test_val_ratio_zero_trains_on_everything(tiny_data):
    dm = TimitDataModule(str(tiny_data), val_ratio=0.0)
    dm.setup("fit")
    assert len(dm.train_dataloader().dataset) == len(np.load(tiny_data / "train_11.npy"))
    assert dm.val_dataloader() == []


@pytest.mark.parametrize(
    "labels",
    [lambda s: s, lambda s: s.astype(np.int64), lambda s: s.astype(np.int32), lambda s: s.astype(np.float64)],
    ids=["strings", "int64", "int32", "float"],
)
def test_labels_as_strings_or_numbers(tiny_data, tmp_path, labels):
    strings = np.load(tiny_data / "train_label_11.npy")
    data = copy_data(tiny_data, tmp_path / "d", train_label_11=labels(strings))
    dm = TimitDataModule(str(data))
    dm.setup("fit")
    assert dm.train_dataloader().dataset.labels.dtype == np.int64
    assert np.array_equal(dm.train_dataloader().dataset.labels, strings.astype(np.int64))


def test_float64_features_are_served_as_float32(tiny_data, tmp_path):
    features = np.load(tiny_data / "train_11.npy")
    data = copy_data(tiny_data, tmp_path / "d", train_11=features.astype(np.float64))
    dm = TimitDataModule(str(data))
    dm.setup("fit")
    assert isinstance(dm.train_dataloader().dataset.features, np.memmap)  # mapped, not loaded
    x, _ = next(iter(dm.val_dataloader()))
    assert x.dtype == torch.float32
    n_train = int(len(features) * 0.8)
    assert torch.equal(x, torch.from_numpy(features[n_train : n_train + len(x)]))


def test_float64_features_are_converted_once_and_again_when_the_source_changes(tiny_data, tmp_path):
    source = tmp_path / "d" / "train_11.npy"
    features = np.random.default_rng(0).normal(size=(1000, 429))  # float64
    copy_data(tiny_data, tmp_path / "d", train_11=features)
    converted = float32_features(source)
    cache = float32_cache_path(source)
    assert Path(converted.filename) == cache.resolve() and converted.dtype == np.float32
    assert np.array_equal(converted, features.astype(np.float32))  # exactly what .float() computes
    inode = cache.stat().st_ino
    float32_features(source)
    assert cache.stat().st_ino == inode  # reused, not rewritten

    np.save(source, features * 2)  # a new source file (a new modification time)
    os.utime(source, ns=(0, cache.stat().st_mtime_ns - 10**9))  # even one dated before the cache
    assert np.array_equal(float32_features(source), (features * 2).astype(np.float32))


def test_float32_cache_folder_can_be_chosen(tiny_data, tmp_path):
    data = copy_data(tiny_data, tmp_path / "d", test_11=np.load(tiny_data / "test_11.npy").astype(np.float64))
    dm = TimitDataModule(str(data), cache_dir=str(tmp_path / "cache"))
    dm.setup("predict")
    assert (tmp_path / "cache" / "test_11.npy").is_file() and not (data / "float32_cache").exists()


def test_a_batch_is_one_read_and_equals_row_by_row(tiny_data):
    features = np.load(tiny_data / "test_11.npy")
    dataset = FrameDataset(np.load(tiny_data / "test_11.npy", mmap_mode="r"), None, rows=np.arange(10, 50))
    x, rows = dataset.__getitems__([5, 0, 39])
    assert rows.tolist() == [15, 10, 49]  # without labels, items carry their row id in the file
    assert torch.equal(x, torch.from_numpy(features[[15, 10, 49]]))
    assert torch.equal(dataset[5][0], x[0])
    assert len(dataset) == 40


def test_train_loader_shuffles_whole_batches(tiny_data):
    dm = TimitDataModule(str(tiny_data), batch_size=64)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert all(len(b[0]) == 64 for b in batches[:-1])
    assert sum(len(b[1]) for b in batches) == len(dm.train_dataloader().dataset)
    assert not torch.equal(batches[0][1], torch.from_numpy(dm.train_dataloader().dataset.labels[:64]))


def test_synthetic_option_writes_the_demo_data_once(tmp_path):
    target = tmp_path / "demo"
    dm = TimitDataModule(str(target), synthetic=True)
    assert dm.input_dim == 429 and (target / "test_label_11.npy").exists()
    stamp = (target / "train_11.npy").stat().st_mtime_ns
    TimitDataModule(str(target), synthetic=True)
    assert (target / "train_11.npy").stat().st_mtime_ns == stamp


def test_a_run_on_generated_data_says_so_and_one_for_real_data_warns(tiny_data, tmp_path, capsys):
    TimitDataModule(str(tmp_path / "demo"), synthetic=True)
    files = "train_11.npy, train_label_11.npy, test_11.npy, test_label_11.npy written by timit_lit.synthetic (synthetic.json)"
    assert capsys.readouterr().err.splitlines() == [
        f"timit_lit: {tmp_path / 'demo'}: writing a generated TIMIT-shaped set there (data.synthetic true)",
        f"timit_lit: {tmp_path / 'demo'}: generated data, not speech: {files}"]
    # A config for real data (data.synthetic false) on a generated folder: a warning that says what it is.
    with pytest.warns(UserWarning, match=r"holds GENERATED data, not TIMIT speech: train_11\.npy, .*says nothing about speech"):
        TimitDataModule(str(tiny_data))
    with pytest.warns(UserWarning, match="holds GENERATED data"):
        run_in(tmp_path, "fit", "--config", BASELINE, "--data.data_dir", str(tiny_data), "--trainer.fast_dev_run", "true")
    # Files without the generator's mark (the course's) pass for what they are, quietly.
    course = copy_data(tiny_data, tmp_path / "timit_11")
    (course / "synthetic.json").unlink()
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        TimitDataModule(str(course))
    assert not [w for w in caught if "GENERATED" in str(w.message)] and not capsys.readouterr().err


def test_the_demo_writes_no_generated_data_into_a_folder_of_other_files(tmp_path, capsys):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        run_in(tmp_path, "fit", "--config", str(REPO / "configs" / "demo.yaml"), "--data.data_dir", str(folder))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"timit_lit: error: {folder}: not a folder of generated data (no synthetic.json): the generator writes only "
        f"into a missing or empty folder, or one it generated; choose another folder")
    assert [p.name for p in folder.iterdir()] == ["notes.txt"] and not (tmp_path / "lightning_logs").exists()


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_val_ratio_must_be_in_unit_interval(tiny_data, ratio):
    with pytest.raises(InputError, match=r"val_ratio must be in \[0, 1\)"):
        TimitDataModule(str(tiny_data), val_ratio=ratio)


def test_utterance_split_keeps_utterances_whole(tmp_path):
    lengths = write_synthetic_timit(tmp_path, train_utterances=40, test_utterances=2, seed=3)["train"]
    starts = np.concatenate([[0], np.cumsum(lengths)])

    def split(seed):
        dm = TimitDataModule(str(tmp_path), split="utterance", split_seed=seed, val_ratio=0.2)
        dm.setup("fit")
        return dm.train_dataloader().dataset.rows.numpy(), dm.val_dataloader().dataset.rows.numpy()

    train, val = split(0)
    n_rows = starts[-1]
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(n_rows))  # every row once
    utterance_of = np.searchsorted(starts, np.arange(n_rows), side="right") - 1
    assert not set(utterance_of[train]) & set(utterance_of[val])  # no utterance cut in two
    assert 0.2 * n_rows <= len(val) < 0.2 * n_rows + max(lengths)
    assert np.array_equal(split(0)[1], val) and not np.array_equal(split(1)[1], val)


def mapped_files() -> str:
    """The files this process has memory-mapped now (Linux: /proc/self/maps)."""
    return Path("/proc/self/maps").read_text()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps (Linux)")
def test_training_file_stays_mapped_only_while_its_rows_are_read(tiny_data, tmp_path):
    # A map's pages, once read, count in the process's resident memory while it lives: a fit
    # that copied out what it uses (context windows) must not keep the file mapped.
    data = copy_data(tiny_data, tmp_path / "d")
    train = str(data / "train_11.npy")
    rows = TimitDataModule(str(data), context=11, batch_by="rows")
    rows.setup("fit")
    assert train in mapped_files()  # its batches are read from the map
    assert len(rows.dataset("train").row_space.starts) > 1  # later questions reuse that one map
    assert mapped_files().count(train) == 1
    del rows
    gc.collect()  # the data module is in reference cycles
    assert train not in mapped_files()
    for windows in (TimitDataModule(str(data), context=1, batch_by="utterances", val_ratio=0.0),
                    TimitDataModule(str(data), context=21, split="utterance")):
        windows.setup("fit")
        assert train not in mapped_files()
        assert len(next(iter(windows.train_dataloader()))) >= 2  # batches are served from the copied frames
        assert len(windows.file_row_space("test_11.npy").starts) > 1  # maps the test file, reads it, and lets it go
        assert str(data / "test_11.npy") not in mapped_files()


def test_context_windows_of_any_odd_width(tiny_data):
    features = np.load(tiny_data / "train_11.npy")
    same = TimitDataModule(str(tiny_data), context=11, split="utterance")
    same.setup("fit")
    x, _ = same.train_dataloader().dataset.__getitems__([0, 5, 17])
    assert torch.equal(x, torch.from_numpy(features[same.train_dataloader().dataset.rows[[0, 5, 17]].numpy()]))

    wide = TimitDataModule(str(tiny_data), context=21)
    assert wide.input_dim == 21 * 39
    wide.setup("fit")
    x, _ = wide.train_dataloader().dataset.__getitems__([0, 100])
    assert x.shape == (2, 21 * 39) and x.dtype == torch.float32
    # The middle 11 frames of a 21-frame window are the file's row.
    assert torch.equal(x[:, 5 * 39 : 16 * 39], torch.from_numpy(features[[0, 100]]))
    with pytest.raises(InputError, match="odd"):
        TimitDataModule(str(tiny_data), context=12)

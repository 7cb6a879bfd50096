"""Bad input: one line naming the file and the problem, a non-zero exit, nothing lost."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import BASELINE, copy_data, fails_with


def nan_at_row_7(tiny_data):
    features = np.load(tiny_data / "train_11.npy")
    features[7, 100] = np.nan
    return features


def inf_at_row_3(tiny_data):
    features = np.load(tiny_data / "test_11.npy").astype(np.float64)
    features[3, 0] = np.inf
    return features


def labels_with(row, value, dtype=None):
    """The training labels with one value changed (cast to ``dtype`` first)."""

    def make(tiny_data):
        labels = np.load(tiny_data / "train_label_11.npy")
        labels = labels if dtype is None else labels.astype(dtype)
        labels[row] = value
        return labels

    return make


def labels_2d(tiny_data):
    return np.load(tiny_data / "train_label_11.npy").reshape(-1, 1)


CASES = {
    # id: (files to replace, subcommand, words the message must hold)
    "train features missing": (dict(train_11=None), "fit", ["train_11.npy", "file not found"]),
    "labels missing": (dict(train_label_11=None), "fit", ["train_label_11.npy", "file not found"]),
    "not npy": (dict(train_11=b"not an array"), "fit", ["train_11.npy", "not a readable .npy file"]),
    "features 3-D": (dict(train_11=np.zeros((4, 3, 143), np.float32)), "fit", ["train_11.npy", "must be 2-D"]),
    "features not float": (dict(train_11=np.zeros((4, 429), np.int64)), "fit", ["train_11.npy", "floating point"]),
    "widths differ": (dict(test_11=np.zeros((5, 428), np.float32)), "predict", ["test_11.npy", "428 features", "429"]),
    "label count": (dict(train_label_11=np.array(["1", "2"])), "fit", ["train_label_11.npy", "2 labels for"]),
    "label not integer": (dict(train_label_11=labels_with(5, "a")), "fit", ["train_label_11.npy", "'a'", "row 5", "not an integer"]),
    "label fractional": (dict(train_label_11=labels_with(2, 1.5, np.float64)), "fit", ["train_label_11.npy", "1.5", "row 2"]),
    "label too big": (dict(train_label_11=labels_with(4, "39")), "fit", ["train_label_11.npy", "label 39 at row 4", "0..38"]),
    "label negative": (dict(train_label_11=labels_with(0, "-1")), "fit", ["train_label_11.npy", "label -1 at row 0"]),
    "labels 2-D": (dict(train_label_11=labels_2d), "fit", ["train_label_11.npy", "must be 1-D"]),
    "nan": (dict(train_11=nan_at_row_7), "fit", ["train_11.npy", "row 7", "NaN or inf"]),
    "inf": (dict(test_11=inf_at_row_3), "predict", ["test_11.npy", "row 3", "NaN or inf"]),
    "no test labels": (dict(test_label_11=None), "test", ["test_label_11.npy", "use `predict`"]),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_data_gives_one_clear_line(case, tiny_data, best_checkpoint, tmp_path, capsys):
    replace, subcommand, words = CASES[case]
    data = copy_data(tiny_data, tmp_path / "data")
    for name, value in replace.items():
        path = data / f"{name}.npy"
        if value is None:
            path.unlink()
        elif isinstance(value, bytes):
            path.write_bytes(value)
        else:
            np.save(path, value(tiny_data) if callable(value) else value)
    args = [subcommand, "--config", BASELINE, "--data.data_dir", str(data), "--trainer.max_epochs", "1"]
    if subcommand != "fit":
        args += ["--ckpt_path", str(best_checkpoint)]
    line = fails_with(tmp_path, capsys, *args)
    for word in words:
        assert word in line, line


@pytest.mark.smoke
def test_missing_data_folder(tmp_path, capsys):
    line = fails_with(tmp_path, capsys, "fit", "--config", BASELINE, "--data.data_dir", str(tmp_path / "nowhere"))
    assert "nowhere: data folder not found" in line


def test_val_ratio_out_of_range(tiny_data, tmp_path, capsys):
    line = fails_with(tmp_path, capsys, "fit", "--config", BASELINE, "--data.data_dir", str(tiny_data), "--data.val_ratio", "1")
    assert "val_ratio must be in [0, 1)" in line


def test_checkpoint_missing(tiny_data, tmp_path, capsys):
    line = fails_with(tmp_path, capsys, "predict", "--config", BASELINE, "--data.data_dir", str(tiny_data),
                      "--ckpt_path", str(tmp_path / "gone.ckpt"))
    assert "gone.ckpt: checkpoint file not found" in line


def test_checkpoint_unreadable(tiny_data, tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\x00garbage" * 100)
    line = fails_with(tmp_path, capsys, "test", "--config", BASELINE, "--data.data_dir", str(tiny_data), "--ckpt_path", str(bad))
    assert "bad.ckpt: not a readable checkpoint" in line


@pytest.mark.smoke
def test_checkpoint_that_is_not_lightnings(tiny_data, tmp_path, capsys):
    other = tmp_path / "weights.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    line = fails_with(tmp_path, capsys, "test", "--config", BASELINE, "--data.data_dir", str(tiny_data), "--ckpt_path", str(other))
    assert "weights.pt: not a Lightning checkpoint" in line


def test_checkpoint_from_other_data_width(tiny_data, best_checkpoint, tmp_path, capsys):
    narrow = copy_data(tiny_data, tmp_path / "narrow", test_11=np.load(tiny_data / "test_11.npy")[:, :39].copy())
    (narrow / "train_11.npy").unlink()
    line = fails_with(tmp_path, capsys, "predict", "--config", BASELINE, "--data.data_dir", str(narrow),
                      "--ckpt_path", str(best_checkpoint))
    assert best_checkpoint.name in line and "does not fit" in line and "39 features" in line


def test_failed_predict_leaves_no_csv_and_keeps_the_old_one(tiny_data, best_checkpoint, tmp_path, capsys):
    data = copy_data(tiny_data, tmp_path / "data", test_11=inf_at_row_3(tiny_data))
    old = tmp_path / "prediction.csv"
    old.write_text("Id,Class\n0,1\n")
    fails_with(tmp_path, capsys, "predict", "--config", BASELINE, "--data.data_dir", str(data), "--ckpt_path", str(best_checkpoint))
    assert old.read_text() == "Id,Class\n0,1\n"
    assert sorted(p.name for p in tmp_path.iterdir() if "csv" in p.name) == ["prediction.csv"]


def test_real_process_exits_non_zero_with_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "timit_lit", "fit", "--config", BASELINE, "--data.data_dir", str(tmp_path / "missing")],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("timit_lit: error: ")
    assert "Traceback" not in result.stderr


def test_a_value_outside_an_options_choices_names_the_option_and_the_choices(tmp_path, capsys):
    line = fails_with(tmp_path, capsys, "fit", "--config", BASELINE, "--model.activation", "tanh")
    assert line == "timit_lit: error: model.activation: tanh is not one of 'sigmoid', 'relu', 'gelu'"
    line = fails_with(tmp_path, capsys, "fit", "--config", BASELINE, "--data.split", "bogus")
    assert line == "timit_lit: error: data.split: bogus is not one of 'contiguous', 'utterance', 'labels'"
    # The same from a config file.
    (tmp_path / "tanh.yaml").write_text("model:\n  activation: tanh\n")
    line = fails_with(tmp_path, capsys, "fit", "--config", BASELINE, "--config", str(tmp_path / "tanh.yaml"))
    assert line == "timit_lit: error: model.activation: tanh is not one of 'sigmoid', 'relu', 'gelu'"


@pytest.mark.smoke
def test_a_missing_config_file_is_one_clean_line(tmp_path, capsys):
    line = fails_with(tmp_path, capsys, "fit", "--config", "nope.yaml")
    assert line == f"timit_lit: error: {tmp_path / 'nope.yaml'}: config file not found (--config)"
    line = fails_with(tmp_path, capsys, "predict", "--config", BASELINE, "--config", str(tmp_path / "gone" / "x.yaml"))
    assert line == f"timit_lit: error: {tmp_path / 'gone' / 'x.yaml'}: config file not found (--config)"

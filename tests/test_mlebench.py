"""MLE-bench's version of the task: the training rows re-split into shuffled train and test files.

The data module recovers the utterances across both files, serves them whole with the test
rows as unlabelled input, validates on held-out labels inside them, and predicts each test
row in its own utterance's context, written in the test file's order (docs/mlebench.md).
"""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.nn import functional as F

from timit_lit.data import TimitDataModule
from timit_lit.data.utterances import utterance_starts
from timit_lit.decoding import PhoneStatistics, clamp_known, viterbi_decode
from timit_lit.models import RecurrentPhoneClassifier
from timit_lit.synthetic import write_synthetic_timit

from helpers import FIGURES, QUIET, REPO, run_in
from helpers.shuffled_split import mlebench_split

MLEBENCH = str(REPO / "configs" / "mlebench.yaml")
TINY = ["--model.hidden_size", "16", "--model.num_layers", "1", "--data.batch_size", "4", "--data.eval_batch_size", "5",
        "--trainer.check_val_every_n_epoch", "1"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A generated set (rows in time order) and MLE-bench's split of its training file."""
    ordered = tmp_path_factory.mktemp("ordered")
    lengths = write_synthetic_timit(ordered, train_utterances=16, test_utterances=2, seed=4, min_phones=4, max_phones=12)
    shuffled = tmp_path_factory.mktemp("mlebench")
    train_ids, test_ids = mlebench_split(ordered, shuffled)
    return ordered, shuffled, lengths["train"], train_ids, test_ids


def test_utterances_found_across_files_and_served_whole(folders, capsys):
    ordered, shuffled, lengths, train_ids, test_ids = folders
    dm = TimitDataModule(str(shuffled), batch_by="utterances", split="labels", val_ratio=0.25, context=1)
    dm.setup("fit")
    said = capsys.readouterr().err.strip().splitlines()
    assert said == [f"timit_lit: {shuffled}: 2 files (train_11.npy {len(train_ids):,}, test_11.npy {len(test_ids):,} "
                    f"rows): {len(lengths)} utterances (mean {sum(lengths) / len(lengths):.1f} rows), rows re-ordered "
                    f"into utterances; {len(test_ids):,} test rows sit inside training utterances"]
    train, val = dm.dataset("train"), dm.dataset("val")
    assert train.row_space is val.row_space and train.row_space.in_utterance_order
    assert len(train) == len(val) == len(lengths)
    # Every row is input, in time order: the served utterances are the ordered file's, frame for frame.
    source = np.concatenate([train_ids, test_ids])[dm.utterances().order]
    served = [source[train.rows[a:b].numpy()] for a, b in zip(train.offsets[:-1], train.offsets[1:])]
    starts = utterance_starts(np.load(ordered / "train_11.npy"))
    assert sorted(map(tuple, served)) == sorted(tuple(range(a, b)) for a, b in zip(starts[:-1], starts[1:]))
    x, y, n = train.__getitems__([0])
    centre = np.load(ordered / "train_11.npy")[served[0]][:, 5 * 39 : 6 * 39]
    np.testing.assert_array_equal(x[0, : n[0]].numpy(), centre)
    # Labels: the test rows' never; the held-out quarter of the training rows' only in validation.
    truth = np.load(ordered / "train_label_11.npy").astype(np.int64)[source]
    rows = train.rows.numpy()
    scored_train, scored_val = train.labels[rows] >= 0, val.labels[rows] >= 0
    is_test = np.isin(source[rows], test_ids)
    assert not (scored_train & scored_val).any() and np.array_equal(scored_train | scored_val, ~is_test)
    assert scored_val.sum() == round(0.25 * len(train_ids))
    np.testing.assert_array_equal(train.labels[rows][scored_train], truth[rows][scored_train])
    np.testing.assert_array_equal(val.labels[rows][scored_val], truth[rows][scored_val])


def test_partly_labelled_utterances_score_their_labelled_frames_only(folders):
    _, shuffled, *_ = folders
    dm = TimitDataModule(str(shuffled), batch_by="utterances", split="labels", val_ratio=0.25, context=1, eval_batch_size=3)
    pl.seed_everything(0)
    model = RecurrentPhoneClassifier(input_dim=39, num_classes=39, hidden_size=8, num_layers=1)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    (logged,) = trainer.validate(model, datamodule=dm, verbose=False)
    val = dm.dataset("val")
    x, y, lengths = val.__getitems__(list(range(len(val))))
    with torch.no_grad():
        logits, targets = model.eval().frame_logits((x, y, lengths))
    labelled = targets >= 0
    assert 0 < labelled.sum() < len(targets)  # the unlabelled frames were input
    assert logged["val/loss"] == pytest.approx(F.cross_entropy(logits[labelled], targets[labelled]).item(), rel=1e-5)
    assert logged["val/acc"] == pytest.approx((logits[labelled].argmax(1) == targets[labelled]).float().mean().item(), abs=1e-6)


def test_predict_gives_each_test_row_its_own_utterance_in_file_order(folders, tmp_path):
    """Fit and predict through the CLI on the shuffled files; each test row's posteriors are
    those the same checkpoint gives the row in the ordered file, and the CSV is in test-file order."""
    ordered, shuffled, lengths, train_ids, test_ids = folders
    run_in(tmp_path, "fit", "--config", MLEBENCH, "--data.data_dir", str(shuffled), *TINY, "--trainer.max_epochs", "1",
           *FIGURES)  # the figures of shuffled rows: segments of recovered utterances
    checkpoint = tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt"
    run_in(tmp_path, "predict", "--config", MLEBENCH, "--data.data_dir", str(shuffled), *TINY, "--ckpt_path", str(checkpoint),
           "--prediction.posteriors_path", str(tmp_path / "shuffled.npy"), "--decoding.enabled", "false")
    lines = (tmp_path / "prediction.csv").read_text().splitlines()
    assert lines[0] == "Id,ClassId" and [int(line.split(",")[0]) for line in lines[1:]] == list(range(len(test_ids)))
    # The ordered training file as a test file: every row in time order, utterances as recovered there.
    as_test = tmp_path / "as_test"
    as_test.mkdir()
    os.symlink(ordered / "train_11.npy", as_test / "test_11.npy")
    run_in(tmp_path, "predict", "--config", MLEBENCH, "--data.data_dir", str(as_test), *TINY, "--ckpt_path", str(checkpoint),
           "--prediction.posteriors_path", str(tmp_path / "ordered.npy"), "--prediction.output_path", "ordered.csv",
           "--decoding.enabled", "false")
    np.testing.assert_allclose(np.load(tmp_path / "shuffled.npy"), np.load(tmp_path / "ordered.npy")[test_ids], atol=1e-5)
    # With the given labels around each test row taken as known, the decoded CSV keeps the same rows.
    run_in(tmp_path, "predict", "--config", MLEBENCH, "--data.data_dir", str(shuffled), *TINY, "--ckpt_path", str(checkpoint),
           "--prediction.output_path", "decoded.csv")
    decoded = np.loadtxt(tmp_path / "decoded.csv", delimiter=",", skiprows=1, dtype=np.int64)
    assert decoded[:, 0].tolist() == list(range(len(test_ids)))
    answers = np.load(shuffled / "answers.npy")
    # A one-epoch 16-unit model is near chance; the known labels around each row carry it far above.
    assert (decoded[:, 1] == answers).mean() > 0.5


def test_known_labels_are_kept_and_the_rest_chosen_around_them():
    stats = PhoneStatistics.estimate(np.array([0, 0, 0, 1, 1, 1, 2, 2, 2]), [0, 9], num_phones=3)
    flat = torch.full((5, 3), float(np.log(1 / 3)), dtype=torch.float64)
    known = np.array([1, -1, -1, -1, 1])
    decoded = viterbi_decode(clamp_known(flat, known), [0, 5], stats, transition_weight=1.0, prior_weight=0.0)
    assert decoded.tolist() == [1, 1, 1, 1, 1]
    sure = torch.log(torch.tensor([[0.1, 0.1, 0.8]] * 5, dtype=torch.float64))
    decoded = viterbi_decode(clamp_known(sure, np.array([0, -1, -1, -1, -1])), [0, 5], stats, 0.0, 0.0)
    assert decoded.tolist() == [0, 2, 2, 2, 2]  # weight 0: the known frame, then each frame's argmax


@pytest.mark.parametrize("option", [["--data.batch_by", "utterances"], ["--data.context", "21"],
                                    ["--data.split", "utterance"], ["--decoding.enabled", "true"]])
def test_utterances_needed_on_rows_that_form_none_stop_in_one_line(folders, tmp_path, capsys, option):
    rng = np.random.default_rng(0)
    for name, n in (("train_11.npy", 60), ("test_11.npy", 20)):
        np.save(tmp_path / name, rng.normal(size=(n, 429)).astype(np.float32))
    np.save(tmp_path / "train_label_11.npy", rng.integers(0, 39, 60))
    with pytest.raises(SystemExit) as exit_info:
        run_in(tmp_path, "fit", "--data.data_dir", str(tmp_path), *option, "--trainer.max_epochs", "1")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"timit_lit: error: {tmp_path}: {' '.join(option).replace('--', '')} needs utterances, but its rows form none: "
        f"80 'utterances' of 1.0 rows on average among 80 rows (no row's last 10 frames are another's first 10)")


def test_a_contiguous_split_of_re_ordered_utterances_is_refused(folders, tmp_path, capsys):
    _, shuffled, *_ = folders
    with pytest.raises(SystemExit) as exit_info:
        run_in(tmp_path, "fit", "--config", MLEBENCH, "--data.data_dir", str(shuffled), "--data.split", "contiguous")
    assert exit_info.value.code == 2
    assert "data.split contiguous needs rows in time order" in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.slow
def test_predict_on_two_processes_writes_the_same_csv(folders, tmp_path):
    _, shuffled, *_ = folders
    common = ["--config", MLEBENCH, "--data.data_dir", str(shuffled), *TINY]
    run_in(tmp_path, "fit", *common, "--trainer.max_epochs", "1")
    checkpoint = str(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt")
    run_in(tmp_path, "predict", *common, "--ckpt_path", checkpoint, "--prediction.output_path", str(tmp_path / "one.csv"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}  # this checkout's package
    result = subprocess.run([sys.executable, "-m", "timit_lit", "predict", *common, "--ckpt_path", checkpoint,
                             "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
                             "--prediction.output_path", str(tmp_path / "two.csv"), *QUIET],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "one.csv").read_bytes() == (tmp_path / "two.csv").read_bytes()


def test_the_row_space_says_which_file_row_and_utterance_each_row_id_is(folders):
    """What decoding and the CSV writer ask of a predict dataset's row space, on a shuffled folder."""
    _, shuffled, lengths, train_ids, test_ids = folders
    dm = TimitDataModule(str(shuffled), batch_by="utterances", context=1)
    dm.setup("predict")
    space = dm.dataset("predict").row_space
    assert space.in_utterance_order and space.file == "test_11.npy" and space.n_rows == len(train_ids) + len(test_ids)
    ids = np.arange(space.n_rows)
    file_rows = space.file_row_ids(ids)  # the test file's row of each id, -1 for a training row
    assert (file_rows < 0).sum() == len(train_ids)
    assert np.array_equal(file_rows[space.positions("test_11.npy")], np.arange(len(test_ids)))
    # Its segments are the source's utterances: consecutive frames of the ordered file, each whole.
    source = np.concatenate([train_ids, test_ids])[dm.utterances().order]
    offsets = space.segments(ids)
    assert sorted(np.diff(offsets)) == sorted(lengths)
    assert all((np.diff(source[a:b]) == 1).all() for a, b in zip(offsets[:-1], offsets[1:]))
    # Decoding may take the training rows' labels as given, never a test row's.
    labels = np.load(shuffled / "train_label_11.npy").astype(np.int64)
    assert np.array_equal(space.given_labels[space.positions("train_11.npy")], labels)
    assert (space.given_labels[space.positions("test_11.npy")] == -1).all()
    # A DataLoader worker's copy carries what was worked out, not the data module's recovery.
    copy = pickle.loads(pickle.dumps(space))
    assert copy.folder_utterances is None and np.array_equal(copy.segments(ids), offsets)


def test_the_notebooks_mlp_takes_the_shuffled_rows_as_they_are(folders, tmp_path, recwarn):
    """The baseline needs no utterances: it trains on the training file's rows in their shuffled
    order (a contiguous split, as the notebook's), says why it gives no phone error rate, and
    predicts every test row in the file's order."""
    _, shuffled, _, train_ids, test_ids = folders
    common = ["--config", str(REPO / "configs" / "baseline.yaml"), "--data.data_dir", str(shuffled),
              "--model.hidden_sizes", "[32]"]
    fit = run_in(tmp_path, "fit", *common, "--trainer.max_epochs", "1")
    train, val = (fit.datamodule.dataset(split) for split in ("train", "val"))
    assert train.row_space is val.row_space and not train.row_space.in_utterance_order
    assert train.row_space.file == "train_11.npy"
    rows = np.concatenate([train.rows.numpy(), val.rows.numpy()])
    assert np.array_equal(rows, np.arange(len(train_ids))) and len(val) == pytest.approx(0.2 * len(train_ids), abs=1)
    assert any("utterances of these rows cannot be told" in str(w.message) and "not in time order" in str(w.message)
               for w in recwarn.list)
    run_in(tmp_path, "predict", *common, "--ckpt_path", "last", "--prediction.output_path", str(tmp_path / "p.csv"))
    ids = [int(line.split(",")[0]) for line in (tmp_path / "p.csv").read_text().splitlines()[1:]]
    assert ids == list(range(len(test_ids)))

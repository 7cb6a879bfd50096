"""Transductive training (issue 26's lever 1): a fit that also serves the test file's utterances,
their frames learning a teacher's posteriors (``data.test_targets``) instead of labels."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from timit_lit.data import TimitDataModule
from timit_lit.data.datasets import TAUGHT, UNLABELLED
from timit_lit.models import RecurrentPhoneClassifier

from helpers import REPO, fails_with, run_in
from helpers.shuffled_split import mlebench_split

SMALL = ["--config", str(REPO / "configs" / "recurrent.yaml"), "--model.hidden_size", "16", "--model.num_layers", "1",
         "--data.batch_size", "4", "--data.eval_batch_size", "5"]
CENTRE = slice(5 * 39, 6 * 39)  # context 1: each row's centre frame


def random_posteriors(n_rows: int, seed: int = 0) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(scale=3.0, size=(n_rows, 39))
    return (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)


def served(module: TimitDataModule, split: str):
    """Every frame ``split``'s dataset serves, in order: features, target, teacher posteriors (or None)."""
    dataset = module.dataset(split)
    x, y, lengths, *soft = dataset.__getitems__(list(range(len(dataset))))
    real = torch.arange(x.shape[1])[None, :] < lengths[:, None]
    return x[real].numpy(), y[real].numpy(), soft[0][real].numpy() if soft else None


def data_module(data_dir, **options) -> TimitDataModule:
    module = TimitDataModule(str(data_dir), batch_by="utterances", context=1, split="utterance", val_ratio=0.3, **options)
    module.setup("fit")
    return module


def test_the_test_utterances_train_with_the_teachers_posteriors_beside_the_same_training_and_validation(tiny_data, tmp_path):
    test_features = np.load(tiny_data / "test_11.npy")
    posteriors = random_posteriors(len(test_features))
    np.save(tmp_path / "teacher.npy", posteriors)
    plain = data_module(tiny_data)
    taught = data_module(tiny_data, test_targets=str(tmp_path / "teacher.npy"))

    x, y, soft = served(taught, "train")
    at_test = y == TAUGHT
    # The test file's rows, each once, in its order, carrying the teacher's posteriors ...
    np.testing.assert_array_equal(x[at_test], test_features[:, CENTRE])
    np.testing.assert_array_equal(soft[at_test], posteriors)
    # ... and the training rows as without them: the same frames, labels, and no teacher.
    plain_x, plain_y, _ = served(plain, "train")
    np.testing.assert_array_equal(x[~at_test], plain_x)
    np.testing.assert_array_equal(y[~at_test], plain_y)
    assert not soft[~at_test].any()
    # Validation: the same utterances, drawn as without the test rows.
    for part, plain_part in zip(served(taught, "val")[:2], served(plain, "val")[:2]):
        np.testing.assert_array_equal(part, plain_part)


def test_training_rows_keep_their_own_teachers_posteriors_beside_the_test_rows(tiny_data, tmp_path):
    n_train = len(np.load(tiny_data / "train_11.npy", mmap_mode="r"))
    np.save(tmp_path / "train_teacher.npy", random_posteriors(n_train, seed=1))
    test_posteriors = random_posteriors(len(np.load(tiny_data / "test_11.npy", mmap_mode="r")))
    np.save(tmp_path / "test_teacher.npy", test_posteriors)
    distilled = data_module(tiny_data, soft_targets=str(tmp_path / "train_teacher.npy"))
    both = data_module(tiny_data, soft_targets=str(tmp_path / "train_teacher.npy"),
                       test_targets=str(tmp_path / "test_teacher.npy"))

    _, y, soft = served(both, "train")
    at_test = y == TAUGHT
    np.testing.assert_array_equal(soft[at_test], test_posteriors)
    np.testing.assert_array_equal(soft[~at_test], served(distilled, "train")[2])


def test_hard_pseudo_labels_teach_the_confident_rows_only(tiny_data, tmp_path):
    posteriors = random_posteriors(len(np.load(tiny_data / "test_11.npy", mmap_mode="r")), seed=1)
    np.save(tmp_path / "teacher.npy", posteriors)
    module = data_module(tiny_data, test_targets=str(tmp_path / "teacher.npy"), test_targets_as="labels",
                         test_targets_confidence=0.5)
    _, y, soft = served(module, "train")
    confident = posteriors.max(axis=1) >= 0.5
    assert 0 < confident.sum() < len(confident)
    test_rows = (y == TAUGHT) | (y == UNLABELLED)  # (the tiny folder's utterances never span the two files)
    np.testing.assert_array_equal(y[test_rows] == TAUGHT, confident)
    np.testing.assert_array_equal(soft[test_rows][confident], np.eye(39, dtype=np.float32)[posteriors.argmax(axis=1)][confident])


def test_the_test_rows_inside_mlebench_training_utterances_learn_the_teacher(tiny_data, tmp_path):
    """MLE-bench's split: test rows sit inside training utterances; each gets its own posteriors,
    except those inside validation utterances, which stay unseen."""
    train_ids, test_ids = mlebench_split(tiny_data, tmp_path / "shuffled")
    posteriors = random_posteriors(len(test_ids))
    np.save(tmp_path / "teacher.npy", posteriors)
    module = data_module(tmp_path / "shuffled", test_targets=str(tmp_path / "teacher.npy"))
    x, y, soft = served(module, "train")
    at_test = y == TAUGHT
    val_x, val_y, _ = served(module, "val")
    in_validation = val_y == UNLABELLED  # the test rows of validation utterances
    assert in_validation.sum() > 0 and at_test.sum() + in_validation.sum() == len(test_ids)
    assert not set(map(bytes, val_x)) & set(map(bytes, x))
    # Row i of the shuffled test file is row test_ids[i] of the ordered training file.
    ordered = np.load(tiny_data / "train_11.npy")[:, CENTRE]
    row_of_frame = {frame.tobytes(): i for i, frame in enumerate(np.load(tmp_path / "shuffled" / "test_11.npy")[:, CENTRE])}
    rows = np.array([row_of_frame[frame.tobytes()] for frame in x[at_test]])
    np.testing.assert_array_equal(x[at_test], ordered[test_ids[rows]])
    np.testing.assert_array_equal(soft[at_test], posteriors[rows])


def test_a_taught_frame_has_the_teachers_cross_entropy_and_weighs_as_a_labelled_one():
    model = RecurrentPhoneClassifier(input_dim=39, hidden_size=8, num_layers=1, label_smoothing=0.1,
                                     distillation_weight=0.25)
    torch.manual_seed(0)
    logits = torch.randn(7, 39)
    targets = torch.tensor([3, -1, 5, -2, TAUGHT, 0, TAUGHT])
    teacher = torch.softmax(torch.randn(7, 39), dim=1)
    labelled, taught = targets >= 0, targets == TAUGHT
    per_frame_labels = F.cross_entropy(logits[labelled], targets[labelled], label_smoothing=0.1, reduction="none")
    per_frame_teacher = -(teacher * logits.log_softmax(dim=1)).sum(dim=1)
    expected = (0.75 * per_frame_labels.sum() + 0.25 * per_frame_teacher[labelled].sum()
                + per_frame_teacher[taught].sum()) / 5
    assert model.training_loss(logits, targets, teacher).item() == pytest.approx(expected.item(), rel=1e-6)
    # A batch of test utterances only learns from the teacher.
    only_taught = torch.full((7,), TAUGHT)
    assert model.training_loss(logits, only_taught, teacher).item() == pytest.approx(per_frame_teacher.mean().item(), rel=1e-6)


def test_a_student_taught_the_test_labels_scores_higher_on_them(tiny_data, tmp_path):
    """End to end through the CLI: with the test labels themselves as the teacher (one-hot), a
    fit learns the test rows; scored on them, it beats the same fit without."""
    labels = np.load(tiny_data / "test_label_11.npy").astype(np.int64)
    np.save(tmp_path / "truth.npy", np.eye(39, dtype=np.float32)[labels])
    common = [*SMALL, "--data.data_dir", str(tiny_data), "--trainer.max_epochs", "3", "--model.lr", "0.01"]
    accuracy = {}
    for name, extra in (("plain", []), ("taught", ["--data.test_targets", str(tmp_path / "truth.npy")])):
        (tmp_path / name).mkdir()
        run_in(tmp_path / name, "fit", *common, *extra)
        (checkpoint,) = (tmp_path / name / "lightning_logs/version_0/checkpoints").glob("epoch=*.ckpt")
        cli = run_in(tmp_path / name, "test", *common, "--ckpt_path", str(checkpoint))
        accuracy[name] = float(cli.trainer.callback_metrics["test/acc"])
    assert accuracy["taught"] > accuracy["plain"] + 0.05, accuracy


def test_test_targets_that_do_not_fit_are_refused_in_one_line(tiny_data, tmp_path, capsys):
    n = len(np.load(tiny_data / "test_11.npy", mmap_mode="r"))
    np.save(tmp_path / "short.npy", random_posteriors(n - 1))
    common = [*SMALL, "--data.data_dir", str(tiny_data)]
    line = fails_with(tmp_path, capsys, "fit", *common, "--data.test_targets", str(tmp_path / "short.npy"))
    assert line == (f"timit_lit: error: {tmp_path / 'short.npy'}: a float32 array of shape ({n - 1}, 39); "
                    f"data.test_targets needs 39 class posteriors (floats) for each of the {n:,} rows of test_11.npy, "
                    f"in its order")
    line = fails_with(tmp_path, capsys, "fit", *common, "--data.test_targets", str(tmp_path / "short.npy"),
                      "--data.test_targets_confidence", "1.5")
    assert line == "timit_lit: error: data.test_targets_confidence must be in [0, 1], got 1.5"
    line = fails_with(tmp_path, capsys, "fit", "--config", str(REPO / "configs" / "baseline.yaml"),
                      "--data.data_dir", str(tiny_data), "--data.test_targets", str(tmp_path / "short.npy"))
    assert line == ("timit_lit: error: data.test_targets serves the test utterances with a teacher's posteriors: "
                    "it needs batch_by utterances")
    no_test = tmp_path / "no_test"
    no_test.mkdir()
    for name in ("train_11.npy", "train_label_11.npy"):
        (no_test / name).symlink_to(tiny_data / name)
    line = fails_with(tmp_path, capsys, "fit", *SMALL, "--data.data_dir", str(no_test), "--data.test_targets",
                      str(tmp_path / "short.npy"))
    assert line == f"timit_lit: error: {no_test / 'test_11.npy'}: file not found; data.test_targets teaches its utterances"

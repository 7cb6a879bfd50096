"""Distillation (issue 20's lever 3): a teacher's posteriors on the training rows, written by
``predict --data.predict_file train_11.npy``, taught to a student through ``data.soft_targets``
and ``model.distillation_weight``."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from timit_lit.data.utterances import utterance_starts
from timit_lit.models import RecurrentPhoneClassifier

from helpers import REPO, fails_with, run_in
from helpers.shuffled_split import mlebench_split

SMALL = ["--config", str(REPO / "configs" / "recurrent.yaml"), "--model.hidden_size", "16", "--model.num_layers", "1",
         "--data.batch_size", "4", "--data.eval_batch_size", "5", "--trainer.max_epochs", "1"]


@pytest.fixture(scope="module")
def teacher(tiny_data, tmp_path_factory):
    """A small recurrent network trained one epoch on the tiny folder: its checkpoint, and its
    posteriors for every training row, written by predict."""
    run = tmp_path_factory.mktemp("teacher")
    run_in(run, "fit", *SMALL, "--data.data_dir", str(tiny_data))
    (checkpoint,) = (run / "lightning_logs/version_0/checkpoints").glob("epoch=*.ckpt")
    run_in(run, "predict", *SMALL, "--data.data_dir", str(tiny_data), "--ckpt_path", str(checkpoint),
           "--data.predict_file", "train_11.npy", "--prediction.output_path", str(run / "train.csv"),
           "--prediction.posteriors_path", str(run / "train_posteriors.npy"))
    return checkpoint, run / "train.csv", run / "train_posteriors.npy"


def test_predict_writes_every_training_rows_posteriors_in_file_order(tiny_data, teacher):
    checkpoint, csv, posteriors_path = teacher
    features = np.load(tiny_data / "train_11.npy")
    posteriors = np.load(posteriors_path)
    assert posteriors.shape == (len(features), 39)
    np.testing.assert_allclose(posteriors.sum(axis=1), 1, rtol=1e-5)
    lines = csv.read_text().splitlines()
    assert lines[0] == "Id,Class" and len(lines) == len(features) + 1
    ids, classes = np.array([line.split(",") for line in lines[1:]], dtype=np.int64).T
    assert np.array_equal(ids, np.arange(len(features))) and np.array_equal(classes, posteriors.argmax(axis=1))
    # Row for row what the network gives each utterance alone (context 1: each row's centre frame).
    saved = torch.load(checkpoint, weights_only=True)
    model = RecurrentPhoneClassifier(**{k: v for k, v in saved["hyper_parameters"].items() if not k.startswith("_")})
    model.load_state_dict(saved["state_dict"])
    model.eval()
    starts = utterance_starts(features)
    for a, b in list(zip(starts[:-1], starts[1:]))[:3]:
        with torch.no_grad():
            logits = model(torch.from_numpy(features[a:b, 195:234])[None], torch.tensor([b - a]))[0]
        np.testing.assert_allclose(posteriors[a:b], logits.softmax(dim=1).numpy(), atol=1e-5)


def test_the_training_rows_of_a_shuffled_folder_get_their_own_posteriors(tiny_data, teacher, tmp_path):
    """MLE-bench's split: the training file's rows in random order, their utterances recovered
    across both files; each row's posterior is the one it has in the ordered folder."""
    checkpoint, _, ordered_path = teacher
    train_ids, _ = mlebench_split(tiny_data, tmp_path / "shuffled")
    run_in(tmp_path, "predict", *SMALL, "--data.data_dir", str(tmp_path / "shuffled"), "--ckpt_path", str(checkpoint),
           "--data.predict_file", "train_11.npy", "--prediction.output_path", str(tmp_path / "train.csv"),
           "--prediction.posteriors_path", str(tmp_path / "train_posteriors.npy"))
    shuffled = np.load(tmp_path / "train_posteriors.npy")
    assert shuffled.shape == (len(train_ids), 39)
    np.testing.assert_allclose(shuffled, np.load(ordered_path)[train_ids], atol=1e-5)


def test_the_distillation_loss_weighs_the_teachers_cross_entropy_against_the_labels():
    model = RecurrentPhoneClassifier(input_dim=39, hidden_size=8, num_layers=1, label_smoothing=0.1,
                                     distillation_weight=0.25)
    torch.manual_seed(0)
    logits = torch.randn(6, 39)
    targets = torch.tensor([3, -1, 5, -2, 0, 7])  # a padding slot (-1) and an unlabelled frame (-2)
    teacher = torch.softmax(torch.randn(6, 39), dim=1)
    labelled = targets >= 0
    labels_loss = F.cross_entropy(logits[labelled], targets[labelled], label_smoothing=0.1)
    teacher_loss = -(teacher[labelled] * logits[labelled].log_softmax(dim=1)).sum(dim=1).mean()
    expected = 0.75 * labels_loss + 0.25 * teacher_loss
    assert model.training_loss(logits, targets, teacher).item() == pytest.approx(expected.item(), rel=1e-6)
    assert model.training_loss(logits, targets).item() == pytest.approx(labels_loss.item(), rel=1e-6)


def fitted_weights(workdir, tiny_data, *args):
    run_in(workdir, "fit", *SMALL, "--data.data_dir", str(tiny_data), "--model.label_smoothing", "0", *args)
    (checkpoint,) = (workdir / "lightning_logs/version_0/checkpoints").glob("epoch=*.ckpt")
    return torch.load(checkpoint, weights_only=True)["state_dict"]


def test_a_student_learns_from_the_soft_targets(tiny_data, tmp_path):
    """A teacher whose posteriors are the labels themselves (one-hot) at weight 1 trains the same
    network as the labels alone; a teacher that says something else trains another."""
    labels = np.load(tiny_data / "train_label_11.npy").astype(np.int64)
    np.save(tmp_path / "one_hot.npy", np.eye(39, dtype=np.float32)[labels])
    np.save(tmp_path / "uniform.npy", np.full((len(labels), 39), 1 / 39, dtype=np.float16))
    runs = {name: tmp_path / name for name in ("labels", "one_hot", "uniform")}
    for run in runs.values():
        run.mkdir()
    plain = fitted_weights(runs["labels"], tiny_data)
    taught = {name: fitted_weights(runs[name], tiny_data, "--data.soft_targets", str(tmp_path / f"{name}.npy"),
                                   "--model.distillation_weight", "1") for name in ("one_hot", "uniform")}
    def largest_change(weights):
        return max((weights[name] - weight).abs().max().item() for name, weight in plain.items())

    # Equal to float rounding (the two losses sum in different orders), against a change of the
    # teacher that moves the weights by far more.
    assert largest_change(taught["one_hot"]) < 1e-5
    assert largest_change(taught["uniform"]) > 1e-3


def test_soft_targets_that_do_not_fit_are_refused_in_one_line(tiny_data, tmp_path, capsys):
    n = len(np.load(tiny_data / "train_11.npy", mmap_mode="r"))
    np.save(tmp_path / "short.npy", np.full((n - 1, 39), 1 / 39, dtype=np.float32))
    not_distributions = np.full((n, 39), 1 / 39, dtype=np.float32)
    not_distributions[5] = 0
    np.save(tmp_path / "zeros.npy", not_distributions)
    np.save(tmp_path / "uniform.npy", np.full((n, 39), 1 / 39, dtype=np.float32))
    common = [*SMALL, "--data.data_dir", str(tiny_data), "--model.distillation_weight", "0.5"]
    line = fails_with(tmp_path, capsys, "fit", *common, "--data.soft_targets", str(tmp_path / "short.npy"))
    assert line == (f"timit_lit: error: {tmp_path / 'short.npy'}: a float32 array of shape ({n - 1}, 39); "
                    f"data.soft_targets needs 39 class posteriors (floats) for each of the {n:,} rows of train_11.npy, "
                    f"in its order")
    line = fails_with(tmp_path, capsys, "fit", *common, "--data.soft_targets", str(tmp_path / "zeros.npy"))
    assert line == (f"timit_lit: error: {tmp_path / 'zeros.npy'}: row 5 is not a distribution over the classes "
                    f"(values >= 0 that sum to 1)")
    line = fails_with(tmp_path, capsys, "fit", *common)
    assert line == "timit_lit: error: model.distillation_weight 0.5 needs a teacher's posteriors: set data.soft_targets"
    line = fails_with(tmp_path, capsys, "fit", *SMALL, "--data.data_dir", str(tiny_data),
                      "--data.soft_targets", str(tmp_path / "uniform.npy"))
    assert line == (f"timit_lit: error: data.soft_targets {tmp_path / 'uniform.npy'} is given, but model "
                    f"RecurrentPhoneClassifier does not learn from it (model.distillation_weight 0)")
    line = fails_with(tmp_path, capsys, "fit", "--config", str(REPO / "configs" / "baseline.yaml"),
                      "--data.data_dir", str(tiny_data), "--data.soft_targets", str(tmp_path / "zeros.npy"))
    assert line == ("timit_lit: error: data.soft_targets serves a teacher's posteriors with utterances: "
                    "it needs batch_by utterances")

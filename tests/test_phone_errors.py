"""Phone error rate and boundary / inner-frame accuracy: small hand-worked cases, then
`validate` / `test` on tiny runs against values recomputed here, independently."""


import numpy as np
import pytest
import torch

from timit_lit.data import TimitDataModule
from timit_lit.data.utterances import utterance_starts
from timit_lit.models import PhoneClassifier, RecurrentPhoneClassifier
from timit_lit.scoring import boundary_accuracy, boundary_mask, phone_error_rate, phone_sequences

from helpers import REPO, run_in
from helpers.metrics import assert_logged, independent_metrics

A, B, C, D, X = 0, 1, 2, 3, 4


def test_frames_collapse_into_phones_within_each_segment():
    sequences = phone_sequences(np.array([A, A, B, B, C, C, C, A, A, B]), [0, 5, 7, 10])
    assert [s.tolist() for s in sequences] == [[A, B, C], [C], [A, B]]
    # The same phone on both sides of a segment's edge is a phone in each.
    assert [s.tolist() for s in phone_sequences(torch.tensor([A, A, A, B]), [0, 2, 4])] == [[A], [A, B]]


@pytest.mark.parametrize("labels, predictions, offsets, per", [
    # Two frames wrong, and still the same phones in the same order: no phone error.
    ([A, A, B, B, C], [A, B, B, C, C], [0, 5], 0.0),
    # A one-frame flicker inside a phone: 1 frame wrong, 2 insertions (a b c -> a b a b c).
    ([A, A, A, B, B, C, C], [A, B, A, B, B, B, C], [0, 7], 2 / 3),
    # a b c d -> a x d: a substitution and a deletion.
    ([A, A, B, B, C, C, D], [A, A, X, X, X, X, D], [0, 7], 2 / 4),
    # Per segment: [a a] [a b] is 3 reference phones; [a a] [b b] deletes one of them.
    ([A, A, A, B], [A, A, B, B], [0, 2, 4], 1 / 3),
])
def test_phone_error_rate_by_hand(labels, predictions, offsets, per):
    assert phone_error_rate(np.array(predictions), np.array(labels), offsets) == pytest.approx(per)


def test_boundary_frames_by_hand():
    # Frames 1..4 each neighbour a different label; frame 0 lies inside the first phone.
    assert boundary_mask(np.array([A, A, B, B, C]), [0, 5]).tolist() == [False, True, True, True, True]
    # No boundary across a segment's edge (B | C), nor in a one-phone segment.
    assert boundary_mask(np.array([A, A, B, C, C, D, D, D]), [0, 3, 5, 8]).tolist() == [
        False, True, True, False, False, False, False, False]
    # [a b b c c] against [a a b b c]: frames 2 and 4 right of the 4 boundary frames, frame 0 right inside.
    assert boundary_accuracy(np.array([A, B, B, C, C]), np.array([A, A, B, B, C]), [0, 5]) == {
        "acc_boundary": 0.5, "acc_inner": 1.0, "errors_at_boundary": 1.0}


@pytest.fixture(scope="module")
def learnt_checkpoint(tiny_data, tmp_path_factory):
    """A ReLU MLP that has learnt something (the session's baseline run predicts one class
    for every frame, which would leave PER and the boundaries nearly untested)."""
    workdir = tmp_path_factory.mktemp("learnt")
    run_in(workdir, "fit", "--config", str(REPO / "configs" / "demo.yaml"), "--data.data_dir", str(tiny_data),
           "--data.batch_size", "64", "--trainer.max_epochs", "3", "--figures.enabled", "false")
    (best,) = (workdir / "lightning_logs" / "version_0" / "checkpoints").glob("epoch=*.ckpt")
    return best


# Independent re-computations (helpers.metrics), sharing no code with timit_lit.scoring.

def segments_of(rows, starts):
    """(first, stop) positions in ``rows`` of each run of consecutive rows inside one utterance."""
    begins = set(starts.tolist())
    cuts = [0] + [i for i in range(1, len(rows)) if rows[i] != rows[i - 1] + 1 or rows[i] in begins]
    return list(zip(cuts, cuts[1:] + [len(rows)]))


def test_test_logs_per_and_boundary_accuracy_of_the_predictions(tiny_data, learnt_checkpoint, tmp_path):
    """The checkpoint's `test` metrics equal those recomputed from its `predict` CSV and the test labels."""
    common = ["--ckpt_path", str(learnt_checkpoint), "--data.data_dir", str(tiny_data)]
    metrics = run_in(tmp_path, "test", *common).trainer.callback_metrics
    run_in(tmp_path, "predict", *common, "--prediction.output_path", str(tmp_path / "p.csv"))
    predictions = np.array([int(line.split(",")[1]) for line in (tmp_path / "p.csv").read_text().splitlines()[1:]])
    labels = np.load(tiny_data / "test_label_11.npy").astype(np.int64)
    starts = utterance_starts(np.load(tiny_data / "test_11.npy"))
    expected = independent_metrics(predictions, labels, list(zip(starts[:-1], starts[1:])))
    assert_logged(metrics, "test", expected)
    whole_file = independent_metrics(predictions, labels, [(0, len(labels))])
    assert whole_file["acc_boundary"] != expected["acc_boundary"]  # where the utterances are matters here
    assert len(set(predictions.tolist())) > 10 and 0.1 < expected["per"]  # a model that has learnt some phones
    assert expected["acc_boundary"] < expected["acc_inner"] and 0 < expected["errors_at_boundary"] < 1


@pytest.mark.parametrize("split", ["contiguous", "utterance"])
def test_validate_on_either_split(split, tiny_data, learnt_checkpoint, tmp_path):
    """The contiguous split's cut falls inside an utterance: its two sides are segments of their own."""
    options = dict(split=split, split_seed=2)
    metrics = run_in(tmp_path, "validate", "--ckpt_path", str(learnt_checkpoint), "--data.data_dir", str(tiny_data),
                     "--data.split", split, "--data.split_seed", "2").trainer.callback_metrics
    features = np.load(tiny_data / "train_11.npy")
    labels = np.load(tiny_data / "train_label_11.npy").astype(np.int64)
    starts = utterance_starts(features)
    dm = TimitDataModule(str(tiny_data), **options)
    dm.setup("validate")
    rows = dm.dataset("val").rows.numpy()
    if split == "contiguous":
        assert rows[0] not in starts  # the cut is inside an utterance in this data
    model = PhoneClassifier.load_from_checkpoint(learnt_checkpoint, map_location="cpu").eval()
    with torch.no_grad():
        predictions = model(torch.from_numpy(features[rows])).argmax(1).numpy()
    expected = independent_metrics(predictions, labels[rows], segments_of(rows, starts))
    assert_logged(metrics, "val", expected)


def test_phone_errors_can_be_turned_off(tiny_data, learnt_checkpoint, tmp_path):
    metrics = run_in(tmp_path, "test", "--ckpt_path", str(learnt_checkpoint), "--data.data_dir", str(tiny_data),
                     "--phone_errors.enabled", "false").trainer.callback_metrics
    assert "test/acc" in metrics and not any(name.startswith(("test/per", "test/acc_b")) for name in metrics)


def test_utterance_batches_of_a_recurrent_model(tiny_data, tmp_path):
    """Batches of whole utterances (RecurrentPhoneClassifier): `test` against predict's CSV,
    `validate` (utterance split) against each validation utterance predicted alone."""
    common = ["--config", str(REPO / "configs" / "recurrent.yaml"), "--data.data_dir", str(tiny_data),
              "--data.val_ratio", "0.2", "--model.hidden_size", "32", "--model.num_layers", "2",
              "--data.batch_size", "4", "--data.eval_batch_size", "5"]
    run_in(tmp_path, "fit", *common, "--trainer.max_epochs", "3", "--figures.enabled", "false")
    (best,) = (tmp_path / "lightning_logs" / "version_0" / "checkpoints").glob("epoch=*.ckpt")
    test = run_in(tmp_path, "test", *common, "--ckpt_path", str(best)).trainer.callback_metrics
    run_in(tmp_path, "predict", *common, "--ckpt_path", str(best), "--prediction.output_path", str(tmp_path / "p.csv"))
    predictions = np.array([int(line.split(",")[1]) for line in (tmp_path / "p.csv").read_text().splitlines()[1:]])
    labels = np.load(tiny_data / "test_label_11.npy").astype(np.int64)
    starts = utterance_starts(np.load(tiny_data / "test_11.npy"))
    assert_logged(test, "test", independent_metrics(predictions, labels, list(zip(starts[:-1], starts[1:]))))
    assert len(set(predictions.tolist())) > 5

    val = run_in(tmp_path, "validate", *common, "--ckpt_path", str(best)).trainer.callback_metrics
    features = np.load(tiny_data / "train_11.npy")
    labels = np.load(tiny_data / "train_label_11.npy").astype(np.int64)
    starts = utterance_starts(features)
    dm = TimitDataModule(str(tiny_data), val_ratio=0.2, split="utterance")
    dm.setup("validate")
    rows = dm.dataset("val").rows.numpy()
    segments = segments_of(rows, starts)
    model = RecurrentPhoneClassifier.load_from_checkpoint(best, map_location="cpu").eval()
    centre = slice(5 * 39, 6 * 39)  # context 1: each row's centre frame
    with torch.no_grad():
        predictions = np.concatenate([
            model(torch.from_numpy(features[rows[a:b], centre])[None], torch.tensor([b - a]))[0].argmax(1).numpy()
            for a, b in segments])
    assert_logged(val, "val", independent_metrics(predictions, labels[rows], segments))

"""Viterbi decoding: exact against brute force, utterance by utterance, and useful on phone-like data."""

import itertools
import shutil

import numpy as np
import pytest
import torch

from timit_lit.callbacks import ViterbiEvaluation, viterbi
from timit_lit.data import TEST_FEATURES, TRAIN_FEATURES, TRAIN_LABELS, TimitDataModule
from timit_lit.data.row_space import segment_offsets
from timit_lit.data.utterances import utterance_starts
from timit_lit.decoding import STATISTICS_KEY, PhoneStatistics, choose_transition_weight, frame_accuracy, viterbi_decode
from timit_lit.models.base import STATISTICS_BUFFERS
from timit_lit.synthetic import NUM_PHONES, write_synthetic_timit

from helpers import BASELINE, FAST, run_in
from helpers.metrics import independent_metrics


def random_stats(rng, num_phones):
    """Statistics with random counts: uneven priors and transitions, some of them zero before smoothing."""
    return PhoneStatistics(
        frames=rng.integers(0, 50, num_phones),
        initial=rng.integers(0, 5, num_phones),
        transitions=rng.integers(0, 20, (num_phones, num_phones)),
        smoothing=0.5,
    )


def log_softmax(logits):
    return torch.log_softmax(torch.as_tensor(logits), dim=1).numpy()


def path_score(scores, stats, path, transition_weight, prior_weight):
    emission = scores - prior_weight * stats.log_prior()
    total = transition_weight * stats.log_initial()[path[0]] + emission[np.arange(len(path)), path].sum()
    return total + transition_weight * stats.log_transitions()[path[:-1], path[1:]].sum()


def brute_force(scores, stats, transition_weight, prior_weight):
    """The best path by scoring every one of the S**T state sequences."""
    paths = [np.array(p) for p in itertools.product(range(scores.shape[1]), repeat=len(scores))]
    return max(paths, key=lambda p: path_score(scores, stats, p, transition_weight, prior_weight))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("num_phones", [3, 4])
def test_viterbi_equals_brute_force_on_tiny_utterances(seed, num_phones):
    rng = np.random.default_rng(seed)
    stats = random_stats(rng, num_phones)
    for length in range(1, 6):
        scores = log_softmax(rng.normal(0.0, 2.0, (length, num_phones)))
        for transition_weight, prior_weight in [(1.0, 1.0), (2.5, 0.5), (0.5, 0.0)]:
            expected = brute_force(scores, stats, transition_weight, prior_weight)
            got = viterbi_decode(scores, [0, length], stats, transition_weight, prior_weight).numpy()
            assert got.dtype == np.int64
            assert np.isclose(
                path_score(scores, stats, got, transition_weight, prior_weight),
                path_score(scores, stats, expected, transition_weight, prior_weight),
            )
            assert np.array_equal(got, expected), (length, transition_weight, prior_weight)


def test_many_utterances_at_once_equal_each_alone():
    rng = np.random.default_rng(5)
    stats = random_stats(rng, 6)
    lengths = [7, 1, 30, 4, 1, 30, 12, 2]  # unsorted, repeated and length-1 utterances
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    scores = log_softmax(rng.normal(0.0, 1.5, (offsets[-1], 6)))
    threads = torch.get_num_threads()
    together = viterbi_decode(scores, offsets, stats, transition_weight=1.5)
    assert torch.get_num_threads() == threads, "decoding runs on one CPU thread, then gives the others back"
    alone = [viterbi_decode(scores[a:b], [0, b - a], stats, transition_weight=1.5) for a, b in zip(offsets, offsets[1:])]
    assert torch.equal(together, torch.cat(alone))
    # Decoding across the boundaries (one long utterance) gives a different answer.
    assert not torch.equal(together, viterbi_decode(scores, [0, offsets[-1]], stats, transition_weight=1.5))


def test_estimation_never_counts_a_transition_across_utterances():
    labels = np.array([0, 0, 1, 2, 2, 0, 1, 1])
    stats = PhoneStatistics.estimate(labels, [0, 3, 5, 8], num_phones=3)
    # Inside utterances: 0->0, 0->1 | 2->2 | 0->1, 1->1. The boundary pairs 1->2 and 2->0 are not transitions.
    expected = np.zeros((3, 3), dtype=np.int64)
    expected[0, 0], expected[0, 1], expected[2, 2], expected[1, 1] = 1, 2, 1, 1
    assert np.array_equal(stats.transitions, expected)
    assert np.array_equal(stats.frames, [3, 3, 2])
    assert np.array_equal(stats.initial, [2, 0, 1])  # utterances start with 0, 2, 0
    # Add-k smoothing: unseen transitions keep a small probability; rows are distributions.
    probs = np.exp(stats.log_transitions())
    assert np.allclose(probs.sum(1), 1.0) and np.isclose(probs[1, 2], 1 / (1 + 3))
    assert np.isclose(np.exp(stats.log_prior())[0], (3 + 1) / (8 + 3))


def test_statistics_survive_a_checkpoint(tmp_path):
    labels = np.random.default_rng(0).integers(0, NUM_PHONES, 500)
    stats = PhoneStatistics.estimate(labels, [0, 100, 101, 500], smoothing=0.25)
    torch.save({"phone_statistics": stats.state_dict()}, tmp_path / "ckpt.pt")
    restored = PhoneStatistics.from_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True)["phone_statistics"])
    assert np.array_equal(restored.transitions, stats.transitions) and restored.smoothing == 0.25
    assert np.array_equal(restored.log_transitions(), stats.log_transitions())


@pytest.mark.parametrize(
    "labels, offsets",
    [([0, 1, 2], [0, 3, 3]), ([0, 1, 2], [0, 2]), ([0, 1, 2], [1, 3]), ([0, 1, 39], [0, 3])],
    ids=["empty utterance", "short of the frames", "not from 0", "label out of range"],
)
def test_bad_labels_or_offsets_are_refused(labels, offsets):
    with pytest.raises(ValueError):
        PhoneStatistics.estimate(np.array(labels), np.array(offsets))


def test_weight_zero_without_priors_is_the_framewise_argmax():
    rng = np.random.default_rng(1)
    stats = random_stats(rng, NUM_PHONES)
    offsets = np.array([0, 1, 50, 51, 300])
    scores = torch.log_softmax(torch.randn(300, NUM_PHONES, generator=torch.Generator().manual_seed(1)), dim=1)
    scores = (torch.round(scores * 4) / 4).double()  # exact ties too: the first maximum wins, as in argmax
    # And a phone ahead by one unit in the last place, deep in an utterance, where a
    # running sum of hundreds of frames would round the two together.
    scores[250] = scores[250].clamp(max=-1.0)
    scores[250, 3], scores[250, 7] = -0.5, np.nextafter(-0.5, np.inf)
    decoded = viterbi_decode(scores, offsets, stats, transition_weight=0.0, prior_weight=0.0)
    assert torch.equal(decoded, scores.argmax(1))
    assert not torch.equal(viterbi_decode(scores, offsets, stats, transition_weight=1.0, prior_weight=0.0), decoded)


def test_viterbi_beats_framewise_argmax_on_phone_like_data(tmp_path):
    """Noisy posteriors of generated phone sequences: the estimated transitions clean them up."""
    lengths = write_synthetic_timit(tmp_path, train_utterances=60, test_utterances=20, seed=2, max_phones=20)
    offsets = {split: np.concatenate([[0], np.cumsum(lens)]) for split, lens in lengths.items()}
    labels = {split: np.load(tmp_path / f"{split}_label_11.npy").astype(np.int64) for split in lengths}
    stats = PhoneStatistics.estimate(labels["train"], offsets["train"])

    rng = np.random.default_rng(0)
    truth = labels["test"]
    logits = 3.0 * np.eye(NUM_PHONES)[truth] + rng.normal(0.0, 1.5, (len(truth), NUM_PHONES))
    scores = torch.log_softmax(torch.as_tensor(logits), dim=1)

    argmax = frame_accuracy(scores.argmax(1), truth)
    best, accuracies = choose_transition_weight(scores, truth, offsets["test"], stats, prior_weight=0.0)
    assert accuracies[0.0] == argmax
    assert best > 0 and accuracies[best] > argmax + 0.15, accuracies


@pytest.mark.parametrize("stage", ["validate", "test"])
def test_decoding_is_scored_in_validate_and_test(stage, tiny_data, best_checkpoint, tmp_path):
    def run(*weights):
        cli = run_in(tmp_path, stage, "--ckpt_path", str(best_checkpoint), "--data.data_dir", str(tiny_data),
                     "--decoding.enabled", "true", *weights)
        return {k: v.item() for k, v in cli.trainer.callback_metrics.items()}

    prefix = "val" if stage == "validate" else "test"
    framewise = run("--decoding.transition_weight", "0", "--decoding.prior_weight", "0")
    assert framewise[f"{prefix}/acc_viterbi"] == pytest.approx(framewise[f"{prefix}/acc"], abs=1e-6)  # weights 0 = argmax
    assert framewise[f"{prefix}/per_viterbi"] == framewise[f"{prefix}/per"]
    decoded = run("--decoding.transition_weight", "1", "--decoding.prior_weight", "1")
    assert decoded[f"{prefix}/acc"] == framewise[f"{prefix}/acc"] and 0 <= decoded[f"{prefix}/acc_viterbi"] <= 1
    assert decoded[f"{prefix}/per"] == framewise[f"{prefix}/per"] and decoded[f"{prefix}/per_viterbi"] > 0
    # (whether decoding helps is measured on the replica, docs/results.md; the tiny run's model is near chance)


def test_decoding_and_phone_errors_score_the_same_rows_under_a_batch_limit(tiny_data, best_checkpoint, tmp_path):
    """With limit_test_batches the steps cover the first rows only; both evaluations read the
    one collector of the epoch's predictions, so both score exactly those rows."""
    cli = run_in(tmp_path, "test", "--ckpt_path", str(best_checkpoint), "--data.data_dir", str(tiny_data),
                 "--data.eval_batch_size", "200", "--trainer.limit_test_batches", "2", "--decoding.enabled", "true",
                 "--decoding.transition_weight", "0", "--decoding.prior_weight", "0")
    metrics = {k: v.item() for k, v in cli.trainer.callback_metrics.items()}
    labels = np.load(tiny_data / "test_label_11.npy")
    assert len(labels) > 400  # the limit leaves rows out
    assert metrics["test/acc_viterbi"] == pytest.approx(metrics["test/acc"], abs=1e-6)  # weights 0 = argmax
    assert metrics["test/per_viterbi"] == metrics["test/per"]


def saved_statistics_of(checkpoint: dict) -> PhoneStatistics:
    """The phone statistics a checkpoint's model keeps, as buffers of its state_dict."""
    state = checkpoint["state_dict"]
    return PhoneStatistics(*(state[name].long().numpy() for name in STATISTICS_BUFFERS[:3]), float(state["phone_smoothing"]))


def saved_statistics(path) -> PhoneStatistics:
    return saved_statistics_of(torch.load(path, weights_only=True))


def old_format(checkpoint: dict, statistics: bool) -> dict:
    """``checkpoint`` as timit_lit wrote it before the statistics were buffers: beside the
    weights as plain lists (:data:`STATISTICS_KEY`), or, before that, not at all."""
    stats = PhoneStatistics(*(checkpoint["state_dict"].pop(name).long().numpy() for name in STATISTICS_BUFFERS[:3]),
                            float(checkpoint["state_dict"].pop("phone_smoothing")))
    if statistics:
        checkpoint[STATISTICS_KEY] = stats.state_dict()
    return checkpoint


def split_statistics(data_dir, **options):
    """What fit should count: the training split's rows only, cut at utterances and split cuts; and all rows'."""
    dm = TimitDataModule(str(data_dir), **options)
    features, labels = np.load(data_dir / TRAIN_FEATURES), np.load(data_dir / TRAIN_LABELS).astype(np.int64)
    starts = utterance_starts(features)
    dm.setup("fit")
    train_rows = dm.dataset("train").rows.numpy()
    split = PhoneStatistics.estimate(labels[train_rows], segment_offsets(train_rows, starts))
    return split, PhoneStatistics.estimate(labels, starts)


def assert_same_statistics(got, expected):
    for name in ("frames", "initial", "transitions"):
        assert np.array_equal(getattr(got, name), getattr(expected, name)), name
    assert got.smoothing == expected.smoothing


def test_fit_saves_the_training_split_statistics_in_every_checkpoint(tiny_data, trained_run):
    split, all_rows = split_statistics(tiny_data)
    checkpoints = sorted((trained_run / "checkpoints").glob("*.ckpt"))
    assert len(checkpoints) == 2  # the best and last.ckpt
    for checkpoint in checkpoints:
        assert_same_statistics(saved_statistics(checkpoint), split)
    # The validation rows' labels are left out: fewer frames, other transitions.
    assert split.frames.sum() < all_rows.frames.sum()
    assert not np.array_equal(split.transitions, all_rows.transitions)


def test_utterance_split_and_weights_only_checkpoints_carry_them_too(tiny_data, tmp_path):
    """The utterance split (its own cuts), rebuilt context windows, and a checkpoint without callback state."""
    run_in(tmp_path, "fit", "--config", BASELINE, "--data.data_dir", str(tiny_data), *FAST, "--trainer.max_epochs", "1",
           "--data.split", "utterance", "--data.split_seed", "3", "--data.context", "21",
           "--checkpoint.save_weights_only", "true")
    (best,) = (tmp_path / "lightning_logs" / "version_0" / "checkpoints").glob("epoch=*.ckpt")
    assert "optimizer_states" not in torch.load(best, weights_only=True)  # weights only indeed
    split, all_rows = split_statistics(tiny_data, split="utterance", split_seed=3)
    assert_same_statistics(saved_statistics(best), split)
    assert split.frames.sum() < all_rows.frames.sum()


def test_fit_scores_decoding_with_the_statistics_it_counted(tiny_data, tmp_path):
    cli = run_in(tmp_path, "fit", "--config", BASELINE, "--data.data_dir", str(tiny_data), *FAST,
                 "--trainer.max_epochs", "2", "--decoding.enabled", "true")
    in_fit = cli.trainer.callback_metrics["val/acc_viterbi"].item()
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    again = run_in(tmp_path, "validate", "--ckpt_path", str(last), "--data.data_dir", str(tiny_data),
                   "--decoding.enabled", "true")
    assert again.trainer.callback_metrics["val/acc_viterbi"].item() == in_fit


def without_training_files(data_dir, copy):
    shutil.copytree(data_dir, copy, ignore=shutil.ignore_patterns("float32_cache"))
    (copy / TRAIN_FEATURES).unlink()
    (copy / TRAIN_LABELS).unlink()
    return copy


def test_a_checkpoint_decodes_without_the_training_files(tiny_data, best_checkpoint, tmp_path):
    bare = without_training_files(tiny_data, tmp_path / "bare")

    def test_and_predict(data_dir, name):
        common = ["--ckpt_path", str(best_checkpoint), "--data.data_dir", str(data_dir), "--decoding.enabled", "true"]
        cli = run_in(tmp_path, "test", *common)
        run_in(tmp_path, "predict", *common, "--prediction.output_path", name)
        metrics = cli.trainer.callback_metrics
        return metrics["test/acc_viterbi"].item(), metrics["test/per_viterbi"].item(), (tmp_path / name).read_text()

    assert test_and_predict(bare, "bare.csv") == test_and_predict(tiny_data, "full.csv")
    # test/per_viterbi is the phone error rate of the decoded classes that predict writes.
    _, per_viterbi, csv = test_and_predict(tiny_data, "full.csv")
    classes = np.array([int(line.split(",")[1]) for line in csv.splitlines()[1:]])
    labels = np.load(tiny_data / "test_label_11.npy").astype(np.int64)
    starts = utterance_starts(np.load(tiny_data / TEST_FEATURES))
    expected = independent_metrics(classes, labels, list(zip(starts[:-1], starts[1:])))["per"]
    assert per_viterbi == pytest.approx(expected, abs=1e-6)


def test_predict_writes_decoded_classes(tiny_data, best_checkpoint, tmp_path):
    def predict(name, *decoding, checkpoint=best_checkpoint):
        run_in(tmp_path, "predict", "--ckpt_path", str(checkpoint), "--data.data_dir", str(tiny_data),
               "--prediction.output_path", name, "--prediction.posteriors_path", name + ".npy", *decoding)
        classes = np.array([int(line.split(",")[1]) for line in (tmp_path / name).read_text().splitlines()[1:]])
        return (tmp_path / name).read_text(), classes

    def decoded_directly(name, stats):
        """Decoding the saved posteriors with ``stats``."""
        posteriors = torch.from_numpy(np.load(tmp_path / (name + ".npy"))).clamp_min(1e-30).log()
        return ViterbiEvaluation(True, 1.0, 1.0).decode(posteriors, np.arange(len(posteriors)),
                                                         TimitDataModule(str(tiny_data)).file_row_space(TEST_FEATURES),
                                                         stats).numpy()

    framewise, _ = predict("plain.csv")
    assert predict("zero.csv", "--decoding.enabled", "true", "--decoding.transition_weight", "0",
                   "--decoding.prior_weight", "0")[0] == framewise  # weights 0: the argmax, byte for byte
    decoding = ["--decoding.enabled", "true", "--decoding.transition_weight", "1"]
    _, classes = predict("viterbi.csv", *decoding)
    assert np.array_equal(classes, decoded_directly("viterbi.csv", saved_statistics(best_checkpoint)))
    # The statistics come from the checkpoint: other statistics there (phones that hardly
    # ever change), other classes.
    checkpoint = torch.load(best_checkpoint, weights_only=True)
    checkpoint["state_dict"]["phone_transitions"] += 10**6 * torch.eye(NUM_PHONES)
    sticky = saved_statistics_of(checkpoint)
    torch.save(checkpoint, tmp_path / "sticky.ckpt")
    _, sticky_classes = predict("sticky.csv", *decoding, checkpoint=tmp_path / "sticky.ckpt")
    assert np.array_equal(sticky_classes, decoded_directly("sticky.csv", sticky))
    assert not np.array_equal(sticky_classes, classes)


def test_a_checkpoint_without_statistics_counts_them_from_the_training_file(tiny_data, best_checkpoint, tmp_path,
                                                                            monkeypatch, capsys):
    """Checkpoints from before the statistics were saved: all rows of train_label_11.npy, as decoding did then."""
    old = tmp_path / "old.ckpt"
    torch.save(old_format(torch.load(best_checkpoint, weights_only=True), statistics=False), old)
    said = []
    monkeypatch.setattr(viterbi, "rank_zero_info", said.append)
    run_in(tmp_path, "predict", "--ckpt_path", str(old), "--data.data_dir", str(tiny_data), "--decoding.enabled", "true",
           "--prediction.posteriors_path", "old.npy")
    assert any(line.startswith(f"timit_lit: no phone statistics in {old}") for line in said), said
    classes = np.array([int(line.split(",")[1]) for line in (tmp_path / "prediction.csv").read_text().splitlines()[1:]])
    posteriors = torch.from_numpy(np.load(tmp_path / "old.npy")).clamp_min(1e-30).log()
    _, all_rows = split_statistics(tiny_data)
    expected = ViterbiEvaluation(True, 1.0, 1.0).decode(posteriors, np.arange(len(posteriors)),
                                                        TimitDataModule(str(tiny_data)).file_row_space(TEST_FEATURES),
                                                        all_rows)
    assert np.array_equal(classes, expected.numpy())
    # Without the training files such a checkpoint cannot decode, and says which file is missing.
    bare = without_training_files(tiny_data, tmp_path / "bare")
    with pytest.raises(SystemExit) as exit_info:
        run_in(tmp_path, "test", "--ckpt_path", str(old), "--data.data_dir", str(bare), "--decoding.enabled", "true")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"timit_lit: error: {bare / TRAIN_FEATURES}: file not found (expected a rows x features .npy array)")

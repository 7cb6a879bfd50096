"""The phone-level decoder: exact against brute force, minimum durations kept, padding-proof,
the framewise argmax and frame Viterbi where it should be; and the edit alignment's split."""

import itertools

import numpy as np
import pytest
import torch
from torchmetrics.functional.text import word_error_rate

from timit_lit.decoding import PhoneStatistics, viterbi_decode
from timit_lit.edit_alignment import align, count_edits, frame_edit_counts
from timit_lit.phone_hmm import PhoneHmm, decode_padded, decode_segments, mean_durations
from timit_lit.scoring import phone_error_rate

from helpers import REPO, run_in, without_data_summary


def random_hmm(rng, num_phones, max_duration=3, lm_weight=1.0, insertion_penalty=0.5, prior_weight=0.7,
               duration_weight=0.0):
    stats = PhoneStatistics(frames=rng.integers(1, 50, num_phones), initial=rng.integers(0, 5, num_phones),
                            transitions=rng.integers(0, 20, (num_phones, num_phones)), smoothing=0.5)
    hmm = PhoneHmm.from_statistics(stats, lm_weight=lm_weight, insertion_penalty=insertion_penalty,
                                   prior_weight=prior_weight, duration_weight=duration_weight)
    hmm.min_durations = rng.integers(1, max_duration + 1, num_phones)
    hmm.log_stay = np.log(rng.uniform(0.1, 0.9, num_phones))
    return hmm


def runs(path):
    """(phone, length) of each run of equal phones."""
    return [(phone, len(list(group))) for phone, group in itertools.groupby(path.tolist())]


def path_score(scores, hmm, path):
    """The module docstring's score, or -inf where an inner phone is shorter than its minimum."""
    segments = runs(np.asarray(path))
    for k, (phone, length) in enumerate(segments):
        if 0 < k < len(segments) - 1 and length < hmm.min_durations[phone]:
            return -np.inf
    acoustic = (scores - hmm.prior_weight * hmm.log_prior)[np.arange(len(path)), path].sum()
    phones = [phone for phone, _ in segments]
    lm = hmm.log_initial[phones[0]] + sum(hmm.log_bigram[a, b] for a, b in zip(phones[:-1], phones[1:]))
    # Each phone loops in its last state for the frames beyond its minimum, and all but the last leave it.
    loops = sum(max(length - hmm.min_durations[phone], 0) * hmm.log_stay[phone] for phone, length in segments)
    exits = sum(np.log1p(-np.exp(hmm.log_stay[phone])) for phone, _ in segments[:-1])
    return acoustic + hmm.lm_weight * lm - hmm.insertion_penalty * len(phones) + hmm.duration_weight * (loops + exits)


def log_softmax(rng, frames, phones, spread=2.0):
    return torch.log_softmax(torch.as_tensor(rng.normal(0.0, spread, (frames, phones))), dim=1).numpy()


@pytest.mark.parametrize("seed", range(6))
def test_decoder_finds_the_best_path_of_brute_force(seed):
    rng = np.random.default_rng(seed)
    hmm = random_hmm(rng, 3, insertion_penalty=rng.uniform(0, 2), lm_weight=rng.uniform(0, 2),
                     duration_weight=[0.0, 1.0, rng.uniform(0, 2)][seed % 3])
    for length in range(1, 8):
        scores = log_softmax(rng, length, 3)
        best = max(path_score(scores, hmm, p) for p in itertools.product(range(3), repeat=length))
        got = decode_segments(torch.as_tensor(scores), [0, length], hmm).numpy()
        assert got.dtype == np.int64
        assert np.isclose(path_score(scores, hmm, got), best, atol=1e-4)


def test_inner_phones_last_at_least_their_minimum_duration():
    rng = np.random.default_rng(0)
    hmm = random_hmm(rng, 6, max_duration=7, insertion_penalty=0.0)
    # Noisy posteriors that flicker every frame: the framewise argmax has many 1-frame phones.
    scores = log_softmax(rng, 400, 6, spread=3.0)
    assert min(length for _, length in runs(scores.argmax(1))) == 1
    path = decode_segments(torch.as_tensor(scores), [0, 150, 400], hmm).numpy()
    for segment in (path[:150], path[150:]):
        inner = runs(segment)[1:-1]
        assert len(inner) > 5
        assert all(length >= hmm.min_durations[phone] for phone, length in inner)


@pytest.mark.parametrize("prior_weight", [0.0, 1.0])
def test_one_state_no_lm_no_penalty_is_the_argmax_and_frame_viterbi_without_transitions(prior_weight):
    rng = np.random.default_rng(1)
    stats = PhoneStatistics(frames=rng.integers(1, 50, 5), initial=rng.integers(0, 5, 5),
                            transitions=rng.integers(0, 20, (5, 5)))
    hmm = PhoneHmm.from_statistics(stats, min_duration=1, lm_weight=0.0, insertion_penalty=0.0,
                                   prior_weight=prior_weight)
    scores = torch.as_tensor(log_softmax(rng, 300, 5), dtype=torch.float32)
    offsets = [0, 1, 60, 61, 300]
    got = decode_segments(scores, offsets, hmm)
    expected = (scores.double() - prior_weight * torch.as_tensor(stats.log_prior())).argmax(1)
    assert torch.equal(got, expected)
    assert torch.equal(got, viterbi_decode(scores, offsets, stats, transition_weight=0.0, prior_weight=prior_weight))


def test_padding_and_batching_change_nothing():
    rng = np.random.default_rng(2)
    hmm = random_hmm(rng, 5, max_duration=4)
    lengths = [7, 1, 30, 12, 2, 25]
    utterances = [torch.as_tensor(log_softmax(rng, n, 5)) for n in lengths]
    alone = [decode_padded(u[None], torch.tensor([len(u)]), hmm)[0] for u in utterances]
    padded = torch.full((len(lengths), max(lengths), 5), 0.0, dtype=torch.float64)
    padded.uniform_(-50, 5)  # junk in the padding
    for i, u in enumerate(utterances):
        padded[i, : len(u)] = u
    together = decode_padded(padded, torch.tensor(lengths), hmm)
    for i, u in enumerate(utterances):
        assert torch.equal(together[i, : len(u)], alone[i])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    flat = decode_segments(torch.cat(utterances), offsets, hmm, batch_utterances=4)
    assert torch.equal(flat, torch.cat(alone))


def test_mean_durations_are_frames_per_occurrence():
    # utterances "0 0 0 1 1 2" and "1 1 1 1 0": phone 0 occurs twice in 4 frames, 1 twice in 6, 2 once in 1
    labels = np.array([0, 0, 0, 1, 1, 2, 1, 1, 1, 1, 0])
    stats = PhoneStatistics.estimate(labels, [0, 6, 11], num_phones=4)
    assert np.allclose(mean_durations(stats), [2.0, 3.0, 1.0, 1.0])
    hmm = PhoneHmm.from_statistics(stats, duration_scale=1.0, min_duration=2)
    assert hmm.min_durations.tolist() == [2, 3, 2, 2]
    assert np.allclose(np.exp(hmm.log_bigram[~np.eye(4, dtype=bool)].reshape(4, 3)).sum(1), 1.0)


def test_edit_split_sums_to_the_edit_distance():
    rng = np.random.default_rng(3)
    references, hypotheses = [], []
    for _ in range(200):
        references.append(rng.integers(0, 5, rng.integers(0, 12)).tolist())
        hypotheses.append(rng.integers(0, 5, rng.integers(1, 12)).tolist())
    counts = count_edits(references, hypotheses)
    words = [" ".join(map(str, s)) for s in (references, hypotheses)[0]], [" ".join(map(str, s)) for s in hypotheses]
    total = float(word_error_rate(words[1], words[0])) * counts.reference_phones
    assert counts.edits == round(total)
    assert counts.substitutions and counts.deletions and counts.insertions
    assert sum(counts.confusions.values()) == counts.substitutions
    assert sum(counts.deleted.values()) == counts.deletions and sum(counts.inserted.values()) == counts.insertions


def test_alignment_names_each_kind_of_edit():
    assert align([1, 2, 3], [1, 3]) == [(1, 1), (2, None), (3, 3)]
    assert align([1, 3], [1, 2, 3]) == [(1, 1), (None, 2), (3, 3)]
    assert align([1, 2, 3], [1, 4, 3]) == [(1, 1), (2, 4), (3, 3)]
    assert align([], [5]) == [(None, 5)]


def test_frame_edit_counts_agree_with_the_phone_error_rate():
    rng = np.random.default_rng(4)
    labels = np.repeat(rng.integers(0, 6, 80), rng.integers(1, 6, 80))
    predictions = np.where(rng.random(len(labels)) < 0.15, rng.integers(0, 6, len(labels)), labels)
    offsets = [0, 50, 51, len(labels)]
    counts = frame_edit_counts(predictions, labels, offsets)
    assert np.isclose(counts.rates()["per"], phone_error_rate(predictions, labels, offsets))


PHONE_HMM = str(REPO / "configs" / "phone_hmm.yaml")
PLAIN = ["--phone_decoding.enabled", "true", "--phone_decoding.lm_weight", "0", "--phone_decoding.insertion_penalty", "0",
         "--phone_decoding.prior_weight", "0", "--phone_decoding.min_duration", "1", "--phone_decoding.duration_scale", "0"]
SETTINGS = {"lm_weight": 1.0, "insertion_penalty": 1.5, "prior_weight": 0.5, "min_duration": 2, "duration_scale": 0.4}
DECODED = [f"--phone_decoding.{key}={value}" for key, value in SETTINGS.items()]


@pytest.mark.parametrize("stage", ["validate", "test"])
def test_the_phone_decoder_is_scored_in_validate_and_test(stage, tiny_data, best_checkpoint, tmp_path):
    def run(*options):
        cli = run_in(tmp_path, stage, "--ckpt_path", str(best_checkpoint), "--data.data_dir", str(tiny_data), *options)
        return {k: v.item() for k, v in cli.trainer.callback_metrics.items()}

    prefix = "val" if stage == "validate" else "test"
    plain = run(*PLAIN)  # one state per phone, no weights: the argmax
    assert plain[f"{prefix}/acc_phone_hmm"] == pytest.approx(plain[f"{prefix}/acc"], abs=1e-6)
    assert plain[f"{prefix}/per_phone_hmm"] == pytest.approx(plain[f"{prefix}/per"], abs=1e-6)
    decoded = run("--config", PHONE_HMM, *DECODED)
    rates = [decoded[f"{prefix}/{kind}_phone_hmm"] for kind in ("per", "sub", "del", "ins")]
    assert rates[0] == pytest.approx(sum(rates[1:]), abs=1e-6)
    assert rates[0] < plain[f"{prefix}/per"]  # minimum durations remove the tiny model's flicker


def test_predict_writes_the_phone_decoders_classes_in_row_order(tiny_data, best_checkpoint, tmp_path):
    out = tmp_path / "decoded.csv"
    cli = run_in(tmp_path, "predict", "--ckpt_path", str(best_checkpoint), "--data.data_dir", str(tiny_data),
                 "--config", PHONE_HMM, *DECODED, "--prediction.output_path", str(out),
                 "--prediction.posteriors_path", str(tmp_path / "posteriors.npy"))
    lines = out.read_text().splitlines()
    assert lines[0] == "Id,Class"
    ids = [int(line.split(",")[0]) for line in lines[1:]]
    classes = np.array([int(line.split(",")[1]) for line in lines[1:]])
    assert ids == list(range(len(np.load(tiny_data / "test_11.npy"))))
    # The same as decoding the written posteriors with the checkpoint's statistics.
    stats = cli.model.phone_statistics  # the checkpoint's (a state_dict's buffers)
    assert stats.frames.sum() > 0
    log_posteriors = torch.from_numpy(np.load(tmp_path / "posteriors.npy")).clamp_min(1e-30).log()
    offsets = cli.datamodule.dataset("predict").row_space.starts
    expected = decode_segments(log_posteriors, offsets, PhoneHmm.from_statistics(stats, **SETTINGS)).numpy()
    assert np.array_equal(classes, expected)
    assert not np.array_equal(classes, log_posteriors.argmax(1).numpy())


def test_two_decoders_for_predict_or_a_bad_duration_are_one_line_errors(tiny_data, best_checkpoint, tmp_path, capsys):
    for options in (["--config", PHONE_HMM, "--decoding.enabled", "true"], ["--phone_decoding.min_duration", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            run_in(tmp_path, "predict", "--ckpt_path", str(best_checkpoint), "--data.data_dir", str(tiny_data),
                   "--prediction.output_path", str(tmp_path / "x.csv"), *options)
        assert exit_info.value.code == 2
        error = without_data_summary(capsys.readouterr().err)
        assert len(error) == 1 and "phone_decoding" in error[0], error
    assert not (tmp_path / "x.csv").exists()

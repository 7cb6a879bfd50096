"""Sequence models over whole utterances: padded batches, masking, and the CLI end to end."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from conftest import BASELINE, REPO, run_in
from timit_lit.data import LengthBucketedOrder, UtteranceDataset
from timit_lit.recurrent import RecurrentPhoneClassifier
from timit_lit.utterances import utterance_starts

RECURRENT = str(REPO / "configs" / "recurrent.yaml")
SMALL = ["--model.hidden_size", "32", "--model.num_layers", "2", "--data.batch_size", "4", "--data.eval_batch_size", "5"]


@pytest.mark.parametrize("cell, frames_per_step, conv_channels", [
    ("lstm", 1, 0), ("gru", 1, 0), ("lstm", 2, 0), ("lstm", 3, 0), ("gru", 2, 24), ("lstm", 1, 24)])
def test_padding_never_changes_logits_loss_or_accuracy(cell, frames_per_step, conv_channels):
    """Lengths that are and are not multiples of frames_per_step, one shorter than a step."""
    torch.manual_seed(0)
    model = RecurrentPhoneClassifier(input_dim=39, num_classes=39, cell=cell, hidden_size=16, num_layers=2,
                                     frames_per_step=frames_per_step, conv_channels=conv_channels,
                                     conv_kernel=3).eval()
    lengths = [5, 17, 1, 9]
    utterances = [torch.randn(n, 39) for n in lengths]
    labels = [torch.randint(0, 39, (n,)) for n in lengths]
    # Each utterance alone: no padding at all.
    alone = [model(u[None], torch.tensor([len(u)]))[0] for u in utterances]
    # All four in one batch, zero-padded to 17 frames, the padding filled with junk features.
    x = torch.full((4, 17, 39), 1e3)
    y = torch.full((4, 17), -1)
    for i, (u, lab) in enumerate(zip(utterances, labels)):
        x[i, : len(u)], y[i, : len(u)] = u, lab
    with torch.no_grad():
        logits, targets = model.frame_logits((x, y, torch.tensor(lengths)))
        expected = torch.cat(alone)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(targets, torch.cat(labels))  # real frames only, utterance by utterance
    assert F.cross_entropy(logits, targets).item() == pytest.approx(F.cross_entropy(expected, torch.cat(labels)).item(), abs=1e-5)
    assert torch.equal(logits.argmax(1) == targets, expected.argmax(1) == torch.cat(labels))


def test_frames_per_step_gives_every_frame_its_own_logits():
    """Two frames a step: each frame's logits are their own slice of the step's output, and
    a frame's logits change when its own features do, the other frame's of its step too."""
    torch.manual_seed(0)
    model = RecurrentPhoneClassifier(input_dim=39, num_classes=39, hidden_size=16, num_layers=1, frames_per_step=2).eval()
    assert model.head.out_features == 2 * 39 and model.forward_layers[0].input_size == 2 * 39
    x = torch.randn(1, 6, 39)
    with torch.no_grad():
        before = model(x, torch.tensor([6]))
        x[0, 3] += 1.0  # frame 3 shares its step with frame 2
        after = model(x, torch.tensor([6]))
    assert before.shape == (1, 6, 39)
    changed = (before - after).abs().amax(dim=2)[0] > 1e-6
    assert changed[2] and changed[3]


def test_input_masking_only_in_training_and_seeded():
    model = RecurrentPhoneClassifier(input_dim=39, num_classes=39, hidden_size=8, num_layers=1,
                                     time_masks=2, time_mask_frames=4, feature_masks=2, feature_mask_dims=5)
    x, lengths = torch.randn(3, 30, 39), torch.tensor([30, 12, 7])
    torch.manual_seed(1)
    masked = model.masking(x, lengths)
    torch.manual_seed(1)
    assert torch.equal(masked, model.masking(x, lengths))  # the generator decides: seed_everything fixes them
    zeroed = masked == 0
    assert zeroed.any() and not zeroed.all()
    assert torch.equal(masked[~zeroed], x[~zeroed])  # masks set values to 0 and change nothing else
    per_frame = zeroed.all(dim=2)  # time masks zero whole frames, never more than 2 x 4 of them
    assert (per_frame.sum(dim=1) <= 8).all()
    assert (per_frame[1, 12:].sum() == 0) and (per_frame[2, 7:].sum() == 0)  # only real frames
    y = torch.zeros(3, 30, dtype=torch.long)
    model.eval()
    with torch.no_grad():
        logits, _ = model.frame_logits((x, y, lengths))
        plain = model(x, lengths)[torch.arange(30)[None] < lengths[:, None]]
    torch.testing.assert_close(logits, plain)  # no masks in evaluation


def test_utterance_batches_hold_whole_utterances_in_row_order(tiny_data):
    features = np.load(tiny_data / "train_11.npy", mmap_mode="r")
    labels = np.load(tiny_data / "train_label_11.npy").astype(np.int64)
    starts = utterance_starts(features)
    rows = np.arange(3, starts[-1] - 2)  # cut the first and last utterances short
    dataset = UtteranceDataset(features, labels, rows, starts)
    assert len(dataset) == len(starts) - 1
    x, y, lengths = dataset.__getitems__(list(range(len(dataset))))
    real = torch.arange(x.shape[1])[None] < lengths[:, None]
    assert torch.equal(x[real], torch.from_numpy(np.asarray(features[rows])))  # every row once, in order
    assert torch.equal(y[real], torch.from_numpy(labels[rows]))
    assert (y[~real] == -1).all() and (x[~real] == 0).all()
    assert lengths.tolist() == np.diff(np.clip(starts, rows[0], rows[-1] + 1)).tolist()


@pytest.mark.parametrize("context, frames", [(1, slice(195, 234)), (11, slice(None))])
def test_fit_test_predict_end_to_end(tiny_data, tmp_path, context, frames):
    """Centre frames (the shipped config) and whole 11-frame rows: the input is each row's window."""
    common = ["--config", RECURRENT, "--data.data_dir", str(tiny_data), *SMALL, "--data.context", str(context)]
    cli = run_in(tmp_path, "fit", *common, "--trainer.max_epochs", "2")
    assert cli.model.hparams.input_dim == 39 * context and cli.datamodule.batch_by == "utterances"
    run = tmp_path / "lightning_logs" / "version_0"
    (best,) = (run / "checkpoints").glob("epoch=*.ckpt")
    val = run_in(tmp_path, "validate", *common, "--ckpt_path", str(best)).trainer.callback_metrics
    assert float(val["val/acc"]) == pytest.approx(float(best.stem[-6:]), abs=1e-4)

    # test/acc recomputed here, utterance by utterance, from the checkpoint's weights.
    test = run_in(tmp_path, "test", *common, "--ckpt_path", str(best)).trainer.callback_metrics
    model = RecurrentPhoneClassifier.load_from_checkpoint(best, map_location="cpu").eval()
    features = np.load(tiny_data / "test_11.npy")
    labels = np.load(tiny_data / "test_label_11.npy").astype(np.int64)
    starts = utterance_starts(features)
    with torch.no_grad():
        classes = np.concatenate([
            model(torch.from_numpy(features[a:b, frames])[None], torch.tensor([b - a]))[0].argmax(1).numpy()
            for a, b in zip(starts[:-1], starts[1:])
        ])
    assert float(test["test/acc"]) == pytest.approx(float((classes == labels).mean()), abs=1e-6)

    # predict: the same CSV format and row order as the MLP's, whatever the network.
    out = tmp_path / "prediction.csv"
    run_in(tmp_path, "predict", "--data.data_dir", str(tiny_data), "--ckpt_path", str(best),
           "--prediction.output_path", str(out))  # no config: the checkpoint says what network and batches
    lines = out.read_text().splitlines()
    assert lines[0] == "Id,Class"
    assert lines[1:] == [f"{i},{c}" for i, c in enumerate(classes)]


def test_recurrent_model_with_row_batches_is_a_one_line_error(tiny_data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_in(tmp_path, "fit", "--config", RECURRENT, "--data.data_dir", str(tiny_data), *SMALL,
               "--data.batch_by", "rows", "--data.bucket_by_length", "false", "--trainer.max_epochs", "1")
    assert exit_info.value.code == 2
    assert "set data.batch_by utterances" in capsys.readouterr().err


def test_length_bucketed_order_is_a_shuffle_with_little_padding():
    lengths = np.random.default_rng(0).integers(70, 711, size=1000)
    torch.manual_seed(5)
    order = list(LengthBucketedOrder(lengths, batch_size=16))
    torch.manual_seed(5)
    assert list(LengthBucketedOrder(lengths, batch_size=16)) == order  # seeded by torch's generator
    assert sorted(order) == list(range(1000)) and order != sorted(order)  # every utterance once, shuffled
    assert list(LengthBucketedOrder(lengths, batch_size=16)) != order  # a new order each epoch

    def padded_over_real(order):
        batches = [lengths[order[i : i + 16]] for i in range(0, len(order), 16)]
        return sum(b.max() * len(b) for b in batches) / lengths.sum()

    assert padded_over_real(order) < 1.1 < 1.3 < padded_over_real(list(np.random.default_rng(1).permutation(1000)))


def test_fit_with_length_buckets(tiny_data, tmp_path, capsys):
    cli = run_in(tmp_path, "fit", "--config", RECURRENT, "--data.data_dir", str(tiny_data), *SMALL,
                 "--data.bucket_by_length", "true", "--trainer.max_epochs", "1")
    assert isinstance(cli.trainer.train_dataloader.sampler, LengthBucketedOrder)
    assert 0 <= float(cli.trainer.callback_metrics["val/acc"]) <= 1
    with pytest.raises(SystemExit):
        run_in(tmp_path, "fit", "--config", BASELINE, "--data.data_dir", str(tiny_data), "--data.bucket_by_length", "true")
    assert "bucket_by_length sorts utterances into batches: it needs batch_by utterances" in capsys.readouterr().err

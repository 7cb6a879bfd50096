"""Sequence models over whole utterances: padded batches, masking, and the CLI end to end."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from conftest import BASELINE, REPO, run_in
from test_phone_errors import assert_logged, independent_metrics
from timit_lit.data import LengthBucketedOrder, UtteranceDataset
from timit_lit.models import RecurrentPhoneClassifier
from timit_lit.data.utterances import utterance_starts

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
    common = ["--config", RECURRENT, "--data.data_dir", str(tiny_data), *SMALL, "--data.context", str(context),
              "--data.val_ratio", "0.2"]
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
    # The phone error rate and boundary accuracies of utterance batches: the same as recomputed here.
    expected = independent_metrics(classes, labels, list(zip(starts[:-1], starts[1:])))
    assert_logged(test, "test", expected)

    # predict: the same CSV format and row order as the MLP's, whatever the network.
    out = tmp_path / "prediction.csv"
    run_in(tmp_path, "predict", "--data.data_dir", str(tiny_data), "--ckpt_path", str(best),
           "--prediction.output_path", str(out))  # no config: the checkpoint says what network and batches
    lines = out.read_text().splitlines()
    assert lines[0] == "Id,Class"
    assert lines[1:] == [f"{i},{c}" for i, c in enumerate(classes)]


def test_every_utterance_one_cycle_and_averaged_weights(tiny_data, tmp_path):
    """The shipped recipe's way of training (val_ratio 0, one-cycle stepped per batch, over
    the whole run), with EMA weight averaging: the checkpoint holds the averaged weights,
    and `test` scores those."""
    common = ["--config", RECURRENT, "--data.data_dir", str(tiny_data), *SMALL, "--data.batch_size", "2"]
    ema = ["--trainer.callbacks+=EMAWeightAveraging", "--trainer.callbacks.decay", "0.5"]
    cli = run_in(tmp_path, "fit", *common, *ema, "--trainer.max_epochs", "2")
    assert len(cli.datamodule._loaded["val"]) == 0 and len(cli.datamodule._loaded["train"]) == 12  # every utterance
    (cycle,) = cli.trainer.lr_scheduler_configs
    assert cycle.interval == "step" and isinstance(cycle.scheduler, torch.optim.lr_scheduler.OneCycleLR)
    assert cycle.scheduler.total_steps == cli.trainer.global_step == 12  # 6 batches of 2 utterances, 2 epochs
    assert isinstance(cli.trainer.optimizers[0], torch.optim.AdamW)
    assert cli.trainer.optimizers[0].param_groups[0]["lr"] < 0.002 / 25  # annealed below its start (peak / 25)

    run = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    assert sorted(p.name for p in run.iterdir()) == ["epoch=01.ckpt", "last.ckpt"]  # the last epoch, no metric
    saved = torch.load(run / "last.ckpt", weights_only=True)
    averaged, current = saved["state_dict"], saved["current_model_state"]
    assert any(not torch.equal(averaged[k], current[k]) for k in averaged)

    def loss_with(weights):
        model = RecurrentPhoneClassifier(**{k: v for k, v in saved["hyper_parameters"].items() if not k.startswith("_")})
        model.load_state_dict(weights)
        model.eval()
        features = np.load(tiny_data / "test_11.npy")
        labels = torch.from_numpy(np.load(tiny_data / "test_label_11.npy").astype(np.int64))
        starts = utterance_starts(features)
        with torch.no_grad():
            logits = torch.cat([model(torch.from_numpy(features[a:b, 195:234])[None], torch.tensor([b - a]))[0]
                                for a, b in zip(starts[:-1], starts[1:])])
        return F.cross_entropy(logits, labels).item()

    test = run_in(tmp_path, "test", *common, "--ckpt_path", str(run / "last.ckpt")).trainer.callback_metrics
    assert float(test["test/loss"]) == pytest.approx(loss_with(averaged), abs=1e-5)
    assert float(test["test/loss"]) != pytest.approx(loss_with(current), abs=1e-5)

    # benchmarks/current_weights.py: the same run's trained weights, to measure what averaging gave.
    trained = tmp_path / "trained.ckpt"
    tool = [sys.executable, str(REPO / "benchmarks" / "current_weights.py"), str(run / "last.ckpt"), str(trained)]
    assert subprocess.run(tool, capture_output=True).returncode == 0
    again = subprocess.run(tool, capture_output=True, text=True)  # never overwrites
    assert again.returncode == 2 and again.stderr.strip() == f"error: {trained}: already exists (not overwritten)"
    test = run_in(tmp_path, "test", *common, "--ckpt_path", str(trained)).trainer.callback_metrics
    assert float(test["test/loss"]) == pytest.approx(loss_with(current), abs=1e-5)


def test_label_smoothing_changes_the_training_loss_only():
    torch.manual_seed(0)
    smooth = RecurrentPhoneClassifier(input_dim=39, num_classes=39, hidden_size=8, num_layers=1, label_smoothing=0.1)
    x, y, lengths = torch.randn(2, 7, 39), torch.randint(0, 39, (2, 7)), torch.tensor([7, 4])
    smooth.log = lambda *args, **kwargs: None  # no trainer here
    smooth.eval()
    with torch.no_grad():
        logits, targets = smooth.frame_logits((x, y, lengths))
        val_loss = smooth._evaluate((x, y, lengths), smooth.val_acc, "val")[0]
        train_loss = smooth._evaluate((x, y, lengths), smooth.train_acc, "train")[0]
    assert val_loss.item() == pytest.approx(F.cross_entropy(logits, targets).item(), abs=1e-6)
    assert train_loss.item() == pytest.approx(F.cross_entropy(logits, targets, label_smoothing=0.1).item(), abs=1e-6)
    assert train_loss.item() != pytest.approx(val_loss.item(), abs=1e-4)


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
                 "--data.bucket_by_length", "true", "--data.val_ratio", "0.2", "--trainer.max_epochs", "1")
    assert isinstance(cli.trainer.train_dataloader.sampler, LengthBucketedOrder)
    assert 0 <= float(cli.trainer.callback_metrics["val/acc"]) <= 1
    with pytest.raises(SystemExit):
        run_in(tmp_path, "fit", "--config", BASELINE, "--data.data_dir", str(tiny_data), "--data.bucket_by_length", "true")
    assert "bucket_by_length sorts utterances into batches: it needs batch_by utterances" in capsys.readouterr().err

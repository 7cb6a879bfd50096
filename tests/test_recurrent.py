"""Sequence models over whole utterances: padded batches, masking, and the CLI end to end."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from timit_lit.data import LengthBucketedOrder, RowSpace, UtteranceDataset
from timit_lit.data.utterances import utterance_starts
from timit_lit.models import RecurrentPhoneClassifier
from timit_lit.models.base import statistics_buffers, training_statistics

from helpers import BASELINE, FIGURES, REPO, run_in
from helpers.metrics import assert_logged, independent_metrics

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
        logits, targets = model.real_frames(*model.frame_logits((x, y, torch.tensor(lengths))))
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
        logits, _ = model.real_frames(*model.frame_logits((x, y, lengths)))
        plain = model(x, lengths)[torch.arange(30)[None] < lengths[:, None]]
    torch.testing.assert_close(logits, plain)  # no masks in evaluation


def test_utterance_batches_hold_whole_utterances_in_row_order(tiny_data):
    features = np.load(tiny_data / "train_11.npy", mmap_mode="r")
    labels = np.load(tiny_data / "train_label_11.npy").astype(np.int64)
    starts = utterance_starts(features)
    rows = np.arange(3, starts[-1] - 2)  # cut the first and last utterances short
    dataset = UtteranceDataset(features, labels, rows, RowSpace.in_time_order(starts))
    assert len(dataset) == len(starts) - 1
    x, y, lengths = dataset.__getitems__(list(range(len(dataset))))
    real = torch.arange(x.shape[1])[None] < lengths[:, None]
    assert torch.equal(x[real], torch.from_numpy(np.asarray(features[rows])))  # every row once, in order
    assert torch.equal(y[real], torch.from_numpy(labels[rows]))
    assert (y[~real] == -1).all() and (x[~real] == 0).all()
    assert lengths.tolist() == np.diff(np.clip(starts, rows[0], rows[-1] + 1)).tolist()


@pytest.mark.parametrize("context, frames", [(1, slice(195, 234)), pytest.param(11, slice(None), marks=pytest.mark.slow)])
def test_fit_test_predict_end_to_end(tiny_data, tmp_path, context, frames):
    """Centre frames (the shipped config) and whole 11-frame rows: the input is each row's window."""
    common = ["--config", RECURRENT, "--data.data_dir", str(tiny_data), *SMALL, "--data.context", str(context),
              "--data.val_ratio", "0.2"]
    cli = run_in(tmp_path, "fit", *common, "--trainer.max_epochs", "2", *FIGURES)  # figures of utterance batches
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
    ema = ["--trainer.callbacks+=EMAWeightAveraging", "--trainer.callbacks.decay", "0.9"]
    cli = run_in(tmp_path, "fit", *common, *ema, "--trainer.max_epochs", "2")
    assert len(cli.datamodule.dataset("val")) == 0 and len(cli.datamodule.dataset("train")) == 12  # every utterance
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
    # Weight averaging averages buffers too: the checkpoint keeps the phone statistics the fit counted.
    counted = training_statistics(cli.datamodule.dataset("train"), 39)
    for name, value in statistics_buffers(counted, 39).items():
        assert torch.equal(averaged[name], value), name

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
    logged = {}
    smooth.log = lambda name, value, **kwargs: logged.__setitem__(name, value)  # no trainer here
    smooth.eval()
    with torch.no_grad():
        logits, targets = smooth.real_frames(*smooth.frame_logits((x, y, lengths)))
        train_loss = smooth.training_step((x, y, lengths), 0)
        smooth.validation_step((x, y, lengths), 0)
        val_loss = logged["val/loss"].compute()
    assert logged["train/loss"].compute().item() == pytest.approx(train_loss.item(), abs=1e-6)
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
    order = list(LengthBucketedOrder(lengths, batch_size=16, seed=5))
    torch.manual_seed(123)  # the global generator plays no part
    assert list(LengthBucketedOrder(lengths, batch_size=16, seed=5)) == order  # seed and epoch decide
    assert sorted(order) == list(range(1000)) and order != sorted(order)  # every utterance once, shuffled
    assert list(LengthBucketedOrder(lengths, batch_size=16, seed=6)) != order
    next_epoch = LengthBucketedOrder(lengths, batch_size=16, seed=5)
    next_epoch.set_epoch(1)
    assert list(next_epoch) != order and sorted(next_epoch) == list(range(1000))  # a new order each epoch

    def padded_over_real(order):
        batches = [lengths[order[i : i + 16]] for i in range(0, len(order), 16)]
        return sum(b.max() * len(b) for b in batches) / lengths.sum()

    assert padded_over_real(order) < 1.1 < 1.3 < padded_over_real(list(np.random.default_rng(1).permutation(1000)))


@pytest.mark.parametrize("n_utterances", [1000, 992])
def test_length_bucketed_order_deals_whole_batches_to_the_processes(n_utterances):
    """3 processes: the same epoch order on each, dealt out a batch at a time; together every
    utterance, plus the order's first ones to fill the last round of batches."""
    lengths = np.random.default_rng(0).integers(70, 711, size=n_utterances)
    shares = [LengthBucketedOrder(lengths, batch_size=16, seed=5, num_replicas=3, rank=r) for r in range(3)]
    whole = LengthBucketedOrder(lengths, batch_size=16, seed=5).epoch_order().tolist()
    orders = [list(share) for share in shares]
    assert [len(o) for o in orders] == [len(s) for s in shares] == [-(-n_utterances // 48) * 16] * 3
    dealt = [orders[i % 3][i // 3 * 16 : i // 3 * 16 + 16] for i in range(len(orders[0]) * 3 // 16)]
    assert sum(dealt, []) == (whole + whole)[: 3 * len(orders[0])]  # whole batches, in turn, padded from the start
    for share in shares:
        share.set_epoch(1)
    next_orders = [list(share) for share in shares]
    assert next_orders != orders and set(sum(next_orders, [])) == set(range(n_utterances))  # a new order, all of it


def test_fit_with_length_buckets(tiny_data, tmp_path, capsys):
    cli = run_in(tmp_path, "fit", "--config", RECURRENT, "--data.data_dir", str(tiny_data), *SMALL,
                 "--data.bucket_by_length", "true", "--data.val_ratio", "0.2", "--trainer.max_epochs", "1")
    assert isinstance(cli.trainer.train_dataloader.sampler, LengthBucketedOrder)
    assert 0 <= float(cli.trainer.callback_metrics["val/acc"]) <= 1
    with pytest.raises(SystemExit):
        run_in(tmp_path, "fit", "--config", BASELINE, "--data.data_dir", str(tiny_data), "--data.bucket_by_length", "true")
    assert "bucket_by_length sorts utterances into batches: it needs batch_by utterances" in capsys.readouterr().err


def test_bucketed_fit_resumed_at_an_epoch_end_is_exact(tiny_data, tmp_path):
    """The shipped recipe's order (length buckets) and random draws (dropout, masks): two epochs
    in one go, or one and then a resume from last.ckpt, end with the same weights."""
    common = ["--config", RECURRENT, "--data.data_dir", str(tiny_data), *SMALL, "--data.bucket_by_length", "true"]
    (tmp_path / "whole").mkdir()
    (tmp_path / "resumed").mkdir()
    run_in(tmp_path / "whole", "fit", *common, "--trainer.max_epochs", "2")
    crash = '[{"class_path": "helpers.signal_at.CrashAt", "init_args": {"epoch": 1, "batch": 1}}]'
    with pytest.raises(RuntimeError, match="crash at epoch 1"):
        run_in(tmp_path / "resumed", "fit", *common, "--trainer.max_epochs", "2", "--trainer.callbacks", crash)
    run_in(tmp_path / "resumed", "fit", *common, "--trainer.max_epochs", "2", "--ckpt_path", "last")
    whole, resumed = (torch.load(folder / "lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)
                      for folder in (tmp_path / "whole", tmp_path / "resumed"))
    assert whole["epoch"] == resumed["epoch"] == 1
    for name, tensor in whole["state_dict"].items():
        assert torch.equal(tensor, resumed["state_dict"][name]), name


def test_phase_averaging_averages_the_shifted_groupings_in_evaluation_only():
    torch.manual_seed(0)
    model = RecurrentPhoneClassifier(input_dim=39, num_classes=39, hidden_size=16, num_layers=2, frames_per_step=3,
                                     phase_average=True).eval()
    lengths = [5, 17, 1, 9]
    utterances = [torch.randn(n, 39) for n in lengths]
    x = torch.full((4, 17, 39), 1e3)  # junk in the padding
    y = torch.full((4, 17), -1)
    for i, u in enumerate(utterances):
        x[i, : len(u)], y[i, : len(u)] = u, 0
    with torch.no_grad():
        logits, _ = model.real_frames(*model.frame_logits((x, y, torch.tensor(lengths))))
        # Each utterance alone, shifted by 0, 1, 2 zero frames at its start, the shifted frames' outputs dropped.
        expected = []
        for u in utterances:
            shifted = [model(torch.cat([torch.zeros(s, 39), u])[None], torch.tensor([len(u) + s]))[0, s:].softmax(1)
                       for s in range(3)]
            expected.append(torch.stack(shifted).mean(0).log())
    torch.testing.assert_close(logits, torch.cat(expected), rtol=1e-5, atol=1e-5)
    assert torch.allclose(logits.exp().sum(1), torch.ones(len(logits)))
    # Not the single grouping's posteriors: the average changes them.
    model.phase_average = False
    with torch.no_grad():
        single, _ = model.real_frames(*model.frame_logits((x, y, torch.tensor(lengths))))
    assert not torch.allclose(single.log_softmax(1), logits, atol=1e-3)
    # Training never averages.
    model.phase_average = True
    model.train()
    model.dropout.p = 0.0
    trained, _ = model.real_frames(*model.frame_logits((x, y, torch.tensor(lengths))))
    torch.testing.assert_close(trained, single)


def test_phase_averaging_from_the_command_line_for_any_checkpoint(tiny_data, tmp_path):
    """Not a saved hyperparameter: the evaluation's option decides, whatever the checkpoint was trained with."""
    common = ["--config", RECURRENT, "--data.data_dir", str(tiny_data), *SMALL, "--model.frames_per_step", "2",
              "--data.val_ratio", "0.2"]
    run_in(tmp_path, "fit", *common, "--trainer.max_epochs", "1", "--model.phase_average", "true")
    (best,) = (tmp_path / "lightning_logs" / "version_0" / "checkpoints").glob("epoch=*.ckpt")
    assert "phase_average" not in torch.load(best, weights_only=True)["hyper_parameters"]
    model = RecurrentPhoneClassifier.load_from_checkpoint(best, map_location="cpu").eval()
    features = np.load(tiny_data / "test_11.npy")[:, 195:234]
    labels = np.load(tiny_data / "test_label_11.npy").astype(np.int64)
    starts = utterance_starts(np.load(tiny_data / "test_11.npy"))
    expected = {}
    for averaged in (False, True):
        model.phase_average = averaged
        with torch.no_grad():
            expected[averaged] = np.concatenate([
                model.frame_logits((torch.from_numpy(features[a:b])[None], torch.zeros(1, b - a, dtype=torch.long),
                                    torch.tensor([b - a])))[0].argmax(1).numpy()
                for a, b in zip(starts[:-1], starts[1:])])
    assert not np.array_equal(expected[False], expected[True])
    for averaged in (False, True):
        option = ["--model.phase_average", str(averaged).lower()]
        test = run_in(tmp_path, "test", *common, *option, "--ckpt_path", str(best)).trainer.callback_metrics
        assert float(test["test/acc"]) == pytest.approx(float((expected[averaged] == labels).mean()), abs=1e-6)
        out = tmp_path / f"prediction_{averaged}.csv"
        run_in(tmp_path, "predict", *common, *option, "--ckpt_path", str(best), "--prediction.output_path", str(out))
        assert out.read_text().splitlines()[1:] == [f"{i},{c}" for i, c in enumerate(expected[averaged])]
def test_a_checkpoint_from_when_steps_per_call_was_a_data_option_still_loads(tiny_data, tmp_path):
    """steps_per_call was once a data option linked into every network's hyperparameters; a
    recurrent checkpoint of then carries it twice (the network now refuses it as an argument)
    and still tests, predicts, resumes and joins an ensemble as one saved without it."""
    common = ["--config", RECURRENT, "--data.data_dir", str(tiny_data), *SMALL, "--data.val_ratio", "0.2",
              "--model.schedule", "constant"]  # (a one-cycle's length is fixed: it cannot resume for more epochs)
    run_in(tmp_path, "fit", *common, "--trainer.max_epochs", "1")
    now = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    saved = torch.load(now, weights_only=True)
    assert "steps_per_call" not in saved["hyper_parameters"] and "steps_per_call" not in saved["datamodule_hyper_parameters"]
    saved["hyper_parameters"]["steps_per_call"] = "auto"
    saved["datamodule_hyper_parameters"]["steps_per_call"] = "auto"
    old = tmp_path / "old.ckpt"
    torch.save(saved, old)

    scores = {}
    for name, checkpoint in (("now", now), ("old", old)):
        cli = run_in(tmp_path, "test", *common, "--ckpt_path", str(checkpoint))
        assert type(cli.model) is RecurrentPhoneClassifier
        scores[name] = float(cli.trainer.callback_metrics["test/acc"])
        run_in(tmp_path, "predict", "--data.data_dir", str(tiny_data), "--ckpt_path", str(checkpoint),
               "--prediction.output_path", f"{name}.csv")
    assert scores["old"] == scores["now"]
    assert (tmp_path / "old.csv").read_text() == (tmp_path / "now.csv").read_text()
    ensemble = run_in(tmp_path, "test", "--config", str(REPO / "configs" / "ensemble.yaml"), "--data.data_dir",
                      str(tiny_data), "--model.checkpoints", f"[{old}]")
    assert float(ensemble.trainer.callback_metrics["test/acc"]) == scores["now"]
    resumed = run_in(tmp_path, "fit", *common, "--trainer.max_epochs", "2", "--ckpt_path", str(old))
    assert resumed.trainer.current_epoch == 2 and resumed.trainer.global_step == 2 * saved["global_step"]

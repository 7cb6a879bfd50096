"""The Conformer over whole utterances: padding never matters, and the CLI end to end."""

import numpy as np
import pytest
import torch
from torch import nn

from timit_lit.data.utterances import utterance_starts
from timit_lit.models import ConformerPhoneClassifier, RecurrentPhoneClassifier

from helpers import FIGURES, REPO, run_in

CONFORMER = str(REPO / "configs" / "conformer.yaml")
SMALL = ["--model.d_model", "16", "--model.num_heads", "2", "--model.num_layers", "2", "--model.conv_kernel", "5",
         "--data.batch_size", "4", "--data.eval_batch_size", "5"]


def small_model(**options) -> ConformerPhoneClassifier:
    """A tiny Conformer whose position biases are random, not the initial zeros, so that positions matter."""
    torch.manual_seed(0)
    model = ConformerPhoneClassifier(input_dim=39, num_classes=39, d_model=16, num_heads=2, num_layers=2, conv_kernel=5,
                                     max_distance=4, **options)
    nn.init.normal_(model.positions.bias.weight)
    return model


def padded_batch(utterances: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The utterances in one batch, padded to the longest with junk features and IGNORED targets."""
    n_frames = max(len(u) for u in utterances)
    x = torch.full((len(utterances), n_frames, 39), 1e3)
    y = torch.full((len(utterances), n_frames), -1)
    for i, u in enumerate(utterances):
        x[i, : len(u)], y[i, : len(u)] = u, torch.arange(len(u)) % 39
    return x, y, torch.tensor([len(u) for u in utterances])


@pytest.mark.parametrize("frames_per_step", [1, 2, 3])
@pytest.mark.parametrize("training", [False, True])
def test_padding_never_changes_a_real_frames_logits(frames_per_step, training):
    """Each utterance alone against all four in a batch padded with junk: attention never
    looks at padded keys and the convolution sees zeros past an utterance's end. In
    training too (dropout 0, no masks): no statistic is taken over the padding."""
    model = small_model(frames_per_step=frames_per_step, dropout=0.0).train(training)
    utterances = [torch.randn(n, 39) for n in (5, 17, 1, 9)]  # one shorter than a step, lengths not multiples of it
    x, y, lengths = padded_batch(utterances)
    with torch.no_grad():
        alone = torch.cat([model(u[None], torch.tensor([len(u)]))[0] for u in utterances])
        logits, targets = model.real_frames(*model.frame_logits((x, y, lengths)))
    torch.testing.assert_close(logits, alone, rtol=1e-5, atol=1e-5)
    assert torch.equal(targets, y[y >= 0])  # real frames only, utterance by utterance


def test_every_frame_sees_the_whole_utterance():
    """Attention reaches beyond the convolution's few steps: a change at the first frame
    changes the last frame's logits, 60 frames away, and the frames' own logits differ."""
    model = small_model().eval()
    x = torch.randn(1, 61, 39)
    with torch.no_grad():
        before = model(x, torch.tensor([61]))
        x[0, 0] += 1.0
        after = model(x, torch.tensor([61]))
    assert before.shape == (1, 61, 39)
    assert (before[0, 60] - after[0, 60]).abs().max() > 1e-6


def test_position_biases_depend_on_distance_only_and_are_clipped():
    bias = small_model().positions
    scores = bias(12)  # heads x query steps x key steps
    assert scores.shape == (2, 12, 12)
    torch.testing.assert_close(scores[:, 3, 5], scores[:, 7, 9])  # the same distance, wherever it is
    torch.testing.assert_close(scores[:, 0, 11], scores[:, 0, 4])  # beyond max_distance (4): one bias
    assert not torch.allclose(scores[:, 0, 1], scores[:, 1, 0])  # ahead and behind differ
    assert torch.equal(ConformerPhoneClassifier(num_heads=4).positions.bias.weight, torch.zeros(129, 4))  # start at 0


def test_the_position_bias_and_every_layer_learn():
    model = small_model(frames_per_step=2)
    x, y, lengths = padded_batch([torch.randn(n, 39) for n in (9, 4)])
    logits, targets = model.frame_logits((x, y, lengths))
    model.training_loss(logits, targets).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("option, value, message", [
    ("num_heads", "3", "model.d_model (16) must be a multiple of model.num_heads (3)"),
    ("conv_kernel", "4", "model.conv_kernel must be odd"),
    ("frames_per_step", "0", "model.frames_per_step must be >= 1, got 0"),
])
def test_bad_options_are_one_line_errors(tiny_data, tmp_path, capsys, option, value, message):
    with pytest.raises(SystemExit) as exit_info:
        run_in(tmp_path, "fit", "--config", CONFORMER, "--data.data_dir", str(tiny_data), *SMALL,
               f"--model.{option}", value, "--trainer.max_epochs", "1")
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "lightning_logs").exists()


def test_fit_test_predict_and_checkpoint_round_trip(tiny_data, tmp_path):
    """The shipped config (shrunk) chosen on validation utterances: the checkpoint rebuilds
    the same network with no config, and test and predict score what it computes."""
    common = ["--config", CONFORMER, "--data.data_dir", str(tiny_data), *SMALL, "--data.val_ratio", "0.2"]
    cli = run_in(tmp_path, "fit", *common, "--trainer.max_epochs", "2", *FIGURES)
    assert type(cli.model) is ConformerPhoneClassifier and cli.datamodule.batch_by == "utterances"
    assert cli.model.hparams.input_dim == 39 and cli.model.hparams.frames_per_step == 2
    run = tmp_path / "lightning_logs" / "version_0"
    (best,) = (run / "checkpoints").glob("epoch=*.ckpt")

    model = ConformerPhoneClassifier.load_from_checkpoint(best, map_location="cpu").eval()
    saved = torch.load(best, weights_only=True)
    assert dict(model.hparams) == {k: v for k, v in saved["hyper_parameters"].items() if not k.startswith("_")}
    assert all(torch.equal(t, saved["state_dict"][k]) for k, t in model.state_dict().items())
    val = run_in(tmp_path, "validate", *common, "--ckpt_path", str(best)).trainer.callback_metrics
    assert float(val["val/acc"]) == pytest.approx(float(best.stem[-6:]), abs=1e-4)

    features = np.load(tiny_data / "test_11.npy")
    labels = np.load(tiny_data / "test_label_11.npy").astype(np.int64)
    starts = utterance_starts(features)
    with torch.no_grad():
        classes = np.concatenate([
            model(torch.from_numpy(features[a:b, 195:234])[None], torch.tensor([b - a]))[0].argmax(1).numpy()
            for a, b in zip(starts[:-1], starts[1:])])  # each utterance alone, its centre frames
    test = run_in(tmp_path, "test", *common, "--ckpt_path", str(best)).trainer.callback_metrics
    assert float(test["test/acc"]) == pytest.approx(float((classes == labels).mean()), abs=1e-6)

    out = tmp_path / "prediction.csv"
    run_in(tmp_path, "predict", "--data.data_dir", str(tiny_data), "--ckpt_path", str(best),
           "--prediction.output_path", str(out))  # no config: the checkpoint says what network and batches
    lines = out.read_text().splitlines()
    assert lines[0] == "Id,Class" and lines[1:] == [f"{i},{c}" for i, c in enumerate(classes)]


def test_the_shipped_recipe_trains_every_utterance_and_joins_an_ensemble_with_the_bilstm(tiny_data, tmp_path):
    """val_ratio 0 and a one-cycle AdamW over the whole run, as recurrent.yaml; the last
    epoch's checkpoint is the model, and an ensemble with a BiLSTM averages both posteriors."""
    cli = run_in(tmp_path, "fit", "--config", CONFORMER, "--data.data_dir", str(tiny_data), *SMALL,
                 "--data.batch_size", "2", "--trainer.max_epochs", "2")
    assert len(cli.datamodule.dataset("val")) == 0 and len(cli.datamodule.dataset("train")) == 12  # every utterance
    (cycle,) = cli.trainer.lr_scheduler_configs
    assert cycle.interval == "step" and isinstance(cycle.scheduler, torch.optim.lr_scheduler.OneCycleLR)
    assert cycle.scheduler.total_steps == cli.trainer.global_step == 12  # 6 batches of 2 utterances, 2 epochs
    assert isinstance(cli.trainer.optimizers[0], torch.optim.AdamW)
    checkpoints = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch=01.ckpt", "last.ckpt"]

    (tmp_path / "rnn").mkdir()
    run_in(tmp_path / "rnn", "fit", "--config", str(REPO / "configs" / "recurrent.yaml"), "--data.data_dir",
           str(tiny_data), "--model.hidden_size", "16", "--model.num_layers", "1", "--trainer.max_epochs", "1")
    members = [checkpoints / "last.ckpt", tmp_path / "rnn" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"]
    own = []
    for i, member in enumerate(members):
        run_in(tmp_path, "predict", "--data.data_dir", str(tiny_data), "--ckpt_path", str(member),
               "--prediction.output_path", f"member{i}.csv", "--prediction.posteriors_path", f"member{i}.npy")
        own.append(np.load(tmp_path / f"member{i}.npy"))
    assert type(RecurrentPhoneClassifier.load_from_checkpoint(members[1], map_location="cpu")) is RecurrentPhoneClassifier
    run_in(tmp_path, "predict", "--config", str(REPO / "configs" / "ensemble.yaml"), "--data.data_dir", str(tiny_data),
           "--model.checkpoints", f"[{', '.join(map(str, members))}]", "--prediction.output_path", "ensemble.csv",
           "--prediction.posteriors_path", "ensemble.npy")
    np.testing.assert_allclose(np.load(tmp_path / "ensemble.npy"), np.mean(own, axis=0), rtol=1e-5, atol=1e-6)

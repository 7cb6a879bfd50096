"""Optimisation from the config: any torch optimizer and scheduler, early stopping, gradient
clipping, mixed precision; each through the CLI and its forced callbacks, end to end."""

import math
import warnings

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import BASELINE, FAST, run_in

SGD_STEP_LR = ["--optimizer", "SGD", "--optimizer.lr", "0.05",
               "--lr_scheduler", "StepLR", "--lr_scheduler.step_size", "1", "--lr_scheduler.gamma", "0.5"]


def fit(workdir, data, *options):
    """The baseline network (FAST) for 1 epoch unless ``options`` say otherwise, without the
    figures (a second per validation); returns the CLI."""
    workdir.mkdir(exist_ok=True)
    return run_in(workdir, "fit", "--config", BASELINE, "--data.data_dir", str(data), *FAST, "--trainer.max_epochs", "1",
                  "--figures.enabled", "false", "--trainer.num_sanity_val_steps", "0", *options)


def scalars(workdir):
    acc = EventAccumulator(str(workdir / "lightning_logs" / "version_0"), size_guidance={"scalars": 0}).Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def plain(tiny_data, tmp_path_factory):
    """The weights and metrics of a fit with the defaults (Adam, 32-bit, no clipping)."""
    cli = fit(tmp_path_factory.mktemp("plain"), tiny_data)
    return cli.model.state_dict(), {k: v.item() for k, v in cli.trainer.callback_metrics.items()}


def test_sgd_and_step_lr_from_the_command_line_or_a_config(tiny_data, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = fit(tmp_path / "flags", tiny_data, "--trainer.max_epochs", "3", *SGD_STEP_LR)
    assert not [w for w in caught if "will be overridden" in str(w.message)], "silenced: replacing Adam is the point"
    assert type(cli.trainer.optimizers[0]) is torch.optim.SGD
    curves = scalars(tmp_path / "flags")
    assert curves["lr-SGD"] == pytest.approx([0.05, 0.025, 0.0125])  # halved each epoch
    assert "lr-Adam" not in curves
    # The same from a YAML file, as --print_config writes it.
    config = tmp_path / "sgd.yaml"
    config.write_text(yaml.safe_dump({
        "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05}},
        "lr_scheduler": {"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 1, "gamma": 0.5}},
    }))
    fit(tmp_path / "yaml", tiny_data, "--trainer.max_epochs", "3", "--config", str(config))
    assert scalars(tmp_path / "yaml")["lr-SGD"] == curves["lr-SGD"]


def test_reduce_lr_on_plateau_steps_on_val_loss(tiny_data, tmp_path):
    # No val/loss is ever 10 below the best, so after the first epoch every one is a plateau.
    cli = fit(tmp_path, tiny_data, "--trainer.max_epochs", "3", "--optimizer", "SGD", "--optimizer.lr", "0.05",
              "--lr_scheduler", "ReduceLROnPlateau", "--lr_scheduler.monitor", "val/loss", "--lr_scheduler.patience", "0",
              "--lr_scheduler.threshold", "10", "--lr_scheduler.threshold_mode", "abs")
    assert cli.trainer.lr_scheduler_configs[0].monitor == "val/loss"
    assert scalars(tmp_path)["lr-SGD"] == pytest.approx([0.05, 0.05, 0.005])  # factor 0.1 after epoch 2's val/loss


def test_early_stopping_stops_when_val_acc_stops_improving(tiny_data, tmp_path):
    # lr 0: the weights never change, so val/acc never improves on epoch 0's.
    cli = fit(tmp_path, tiny_data, "--trainer.max_epochs", "5", "--model.lr", "0",
              "--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor", "val/acc",
              "--trainer.callbacks.mode", "max", "--trainer.callbacks.patience", "0")
    assert cli.trainer.current_epoch == 2 and cli.trainer.should_stop  # epochs 0 and 1 of 5
    curves = scalars(tmp_path)
    assert len(curves["val/acc"]) == 2 and curves["val/acc"][0] == curves["val/acc"][1]
    assert (tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt").is_file()  # forced callbacks still there


def test_gradient_clipping_changes_the_weights_only_when_it_clips(tiny_data, plain, tmp_path):
    weights, _ = plain
    clipped = fit(tmp_path / "tiny", tiny_data, "--trainer.gradient_clip_val", "1e-4").model.state_dict()
    assert all(not torch.equal(clipped[name], weights[name]) for name in weights if name.startswith("net."))
    loose = fit(tmp_path / "huge", tiny_data, "--trainer.gradient_clip_val", "1e6").model.state_dict()
    assert all(torch.equal(loose[name], weights[name]) for name in weights)  # a norm below the limit is left alone


@pytest.mark.parametrize("option", [["--trainer.gradient_clip_val", "0.5"], ["--trainer.accumulate_grad_batches", "2"]],
                         ids=["gradient_clip_val", "accumulate_grad_batches"])
def test_own_optimizer_steps_refuse_clipping_and_accumulation_in_one_line(option, tiny_data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        fit(tmp_path, tiny_data, "--model.steps_per_call", "4", *option)
    assert exit_info.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("timit_lit: error: model.steps_per_call > 1 takes the optimizer steps itself, so Lightning "
                           "clips no gradients and accumulates no batches"), line


def test_bf16_mixed_precision_on_cpu(tiny_data, plain, tmp_path):
    cli = fit(tmp_path, tiny_data, "--trainer.precision", "bf16-mixed")
    assert cli.trainer.precision == "bf16-mixed" and cli.trainer.current_epoch == 1
    metrics = {k: v.item() for k, v in cli.trainer.callback_metrics.items()}
    assert math.isfinite(metrics["val/loss"]) and metrics["val/loss"] != plain[1]["val/loss"]  # computed in bf16
    assert all(p.dtype == torch.float32 for p in cli.model.parameters())  # the weights stay float32

"""The command line end to end: fit -> checkpoints -> validate -> test -> predict -> CSV."""

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from timit_lit.cli import SUBCOMMAND_HELP, main
from timit_lit.models import PhoneClassifier

from helpers import BASELINE, FAST, REPO, run_in


def scalars(run_dir):
    events = EventAccumulator(str(run_dir)).Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_fit_leaves_checkpoints_config_and_curves(trained_run):
    names = sorted(p.name for p in (trained_run / "checkpoints").iterdir())
    assert len(names) == 2 and "last.ckpt" in names
    best = next(n for n in names if n != "last.ckpt")
    assert re.fullmatch(r"epoch=0[01]-val_acc=0\.\d{4}\.ckpt", best)
    # One value per epoch for each curve; the best checkpoint holds the best val/acc.
    curves = scalars(trained_run)
    for tag in ("train/loss", "train/acc", "val/loss", "val/acc"):
        assert len(curves[tag]) == 2, tag
    assert float(best[-11:-5]) == pytest.approx(max(curves["val/acc"]), abs=1e-4)
    # last.ckpt is the last epoch, not a copy of the best one.
    assert torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 1
    # The saved config reproduces the run: the baseline's settings with the data's dimensions.
    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert config["seed_everything"] == 0 and config["trainer"]["max_epochs"] == 2
    model = config["model"]
    assert model["class_path"] == "timit_lit.models.PhoneClassifier"
    assert model["init_args"]["hidden_sizes"] == [1024, 512, 128] and model["init_args"]["activation"] == "sigmoid"
    hparams = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=False)["hyper_parameters"]
    assert hparams["input_dim"] == 429 and hparams["num_classes"] == 39


def test_validate_and_test_report_accuracy(tiny_data, best_checkpoint, tmp_path):
    common = ["--config", BASELINE, "--data.data_dir", str(tiny_data), "--ckpt_path", str(best_checkpoint)]
    val = run_in(tmp_path, "validate", *common).trainer.callback_metrics
    assert float(val["val/acc"]) == pytest.approx(float(best_checkpoint.stem[-6:]), abs=1e-4)
    test = run_in(tmp_path, "test", *common).trainer.callback_metrics
    # Accuracy on the labelled test rows, recomputed here from the checkpoint's weights.
    model = PhoneClassifier.load_from_checkpoint(best_checkpoint, map_location="cpu")
    x = torch.from_numpy(np.load(tiny_data / "test_11.npy"))
    y = torch.from_numpy(np.load(tiny_data / "test_label_11.npy").astype(np.int64))
    with torch.no_grad():
        expected = (model(x).argmax(1) == y).float().mean()
    assert float(test["test/acc"]) == pytest.approx(float(expected), abs=1e-6)


def test_predict_writes_the_kaggle_csv(tiny_data, best_checkpoint, tmp_path):
    out = tmp_path / "sub" / "my_prediction.csv"
    run_in(tmp_path, "predict", "--config", BASELINE, "--data.data_dir", str(tiny_data),
           "--ckpt_path", str(best_checkpoint), "--prediction.output_path", str(out))
    text = out.read_text()
    lines = text.split("\n")
    assert lines[0] == "Id,Class" and text.endswith("\n") and " " not in text and "\r" not in text
    rows = [line.split(",") for line in lines[1:-1]]
    n = len(np.load(tiny_data / "test_11.npy", mmap_mode="r"))
    assert [int(r[0]) for r in rows] == list(range(n))
    # The classes are the model's argmax, row by row.
    model = PhoneClassifier.load_from_checkpoint(best_checkpoint, map_location="cpu")
    with torch.no_grad():
        expected = model(torch.from_numpy(np.load(tiny_data / "test_11.npy"))).argmax(1).tolist()
    assert [int(r[1]) for r in rows] == expected
    assert not list(tmp_path.glob("sub/.*tmp*")), "no temporary file is left behind"


def test_default_output_is_prediction_csv(tiny_data, best_checkpoint, tmp_path):
    run_in(tmp_path, "predict", "--config", BASELINE, "--data.data_dir", str(tiny_data), "--ckpt_path", str(best_checkpoint))
    assert (tmp_path / "prediction.csv").read_text().startswith("Id,Class\n0,")


def test_print_config_round_trip(tiny_data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_in(tmp_path, "fit", "--config", BASELINE, "--data.batch_size", "32", "--print_config")
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    config = yaml.safe_load(printed)
    assert config["data"]["batch_size"] == 32 and config["checkpoint"]["monitor"] == "val/acc"
    saved = tmp_path / "printed.yaml"
    saved.write_text(printed)
    # The printed config runs as it is, and prints back the same.
    with pytest.raises(SystemExit):
        run_in(tmp_path, "fit", "--config", str(saved), "--print_config")
    again = capsys.readouterr().out
    assert yaml.safe_load(again) == {**config, "trainer": {**config["trainer"], "enable_progress_bar": False, "enable_model_summary": False}}
    cli = run_in(tmp_path, "fit", "--config", str(saved), "--data.data_dir", str(tiny_data), "--trainer.fast_dev_run", "true")
    assert cli.datamodule.batch_size == 32


def test_val_ratio_zero_keeps_the_last_epoch(tiny_data, tmp_path):
    run_in(tmp_path, "fit", "--config", BASELINE, "--data.data_dir", str(tiny_data), "--data.val_ratio", "0",
           *FAST, "--trainer.max_epochs", "2")
    checkpoints = sorted(p.name for p in (tmp_path / "lightning_logs/version_0/checkpoints").iterdir())
    assert checkpoints == ["epoch=01.ckpt", "last.ckpt"]
    assert "val/acc" not in scalars(tmp_path / "lightning_logs/version_0")


def test_resume_from_last_checkpoint(tiny_data, trained_run, tmp_path):
    last = trained_run / "checkpoints" / "last.ckpt"
    cli = run_in(tmp_path, "fit", "--config", BASELINE, "--data.data_dir", str(tiny_data), *FAST,
                 "--trainer.max_epochs", "3", "--ckpt_path", str(last))
    steps_per_epoch = torch.load(last, weights_only=False)["global_step"] // 2
    assert cli.trainer.current_epoch == 3 and cli.trainer.global_step == 3 * steps_per_epoch
    assert len(scalars(tmp_path / "lightning_logs/version_0")["val/acc"]) == 1  # only the third epoch ran


def test_demo_config_learns(tmp_path):
    """The README's first command, shortened to one epoch on a smaller generated set."""
    from timit_lit.synthetic import write_synthetic_timit

    write_synthetic_timit(tmp_path / "demo_timit_11", train_utterances=100, test_utterances=10)
    cli = run_in(tmp_path, "fit", "--config", str(REPO / "configs/demo.yaml"), "--trainer.max_epochs", "2")
    assert float(cli.trainer.callback_metrics["val/acc"]) > 0.3  # 39 classes: chance is below 0.1


@pytest.mark.slow
def test_demo_config_as_in_the_readme(tmp_path):
    cli = run_in(tmp_path, "fit", "--config", str(REPO / "configs/demo.yaml"))
    assert float(cli.trainer.callback_metrics["val/acc"]) > 0.5
    run_in(tmp_path, "predict", "--config", str(REPO / "configs/demo.yaml"),
           "--ckpt_path", str(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt"))
    assert (tmp_path / "demo_prediction.csv").read_text().startswith("Id,Class\n0,")


@pytest.mark.parametrize("command", [[sys.executable, "-m", "timit_lit"], ["timit-lit"]], ids=["python -m", "script"])
def test_help_lists_the_subcommands(command):
    if command == ["timit-lit"] and shutil.which("timit-lit") is None:
        pytest.skip("the timit-lit script is not installed (pip install -e .)")
    out = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=300, check=True,
                         env={**os.environ, "COLUMNS": "200"}).stdout
    assert out.startswith("usage: timit-lit " if command == ["timit-lit"] else "usage: python -m timit_lit ")
    assert "Framewise phone classification on TIMIT" in out and "Lightning Trainer command line tool" not in out
    for subcommand, line in SUBCOMMAND_HELP.items():
        # Each on one line, whole (COLUMNS wide enough not to wrap it).
        assert re.search(rf"^\s+{subcommand}\s+{re.escape(line)}$", out, re.MULTILINE), subcommand


def test_fit_help_says_where_the_networks_options_are(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    words = " ".join(out.split())  # as wrapped at any terminal width
    assert words.index("`fit --model.help PhoneClassifier` lists the MLP's") < words.index("--trainer.accelerator")
    assert len(out.split("\n\n", 1)[0].splitlines()) == 1  # the usage line, not every option
    # The pointer works: the MLP's options, with their choices.
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--model.help", "PhoneClassifier"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--model.lr LR", "--model.hidden_sizes", "--model.activation {sigmoid,relu,gelu}"):
        assert option in out, option


def test_main_in_a_notebook_does_not_read_the_kernels_argv(monkeypatch, capsys):
    """In Jupyter sys.argv is the kernel's: main() must not take it for a command line."""
    import types

    shell = types.ModuleType("IPython")
    shell.get_ipython = lambda: object()
    monkeypatch.setitem(sys.modules, "IPython", shell)
    monkeypatch.setattr(sys, "argv", ["/usr/lib/python3/site-packages/ipykernel_launcher.py", "-f",
                                      "/root/.local/share/jupyter/runtime/kernel-1234.json"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "timit_lit: error: main() in a notebook has no command line of its own to read: pass the arguments, "
        "main(['fit', '--config', 'configs/demo.yaml']), or call timit_lit.run('fit', ...)\n")
    # With its arguments it runs as anywhere.
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "fit" in capsys.readouterr().out


def test_wider_context_and_utterance_split_end_to_end(tiny_data, tmp_path):
    """A model on 21-frame windows, validated on whole utterances; its checkpoint alone then
    predicts (the context width travels in it)."""
    run_in(tmp_path, "fit", "--config", BASELINE, "--data.data_dir", str(tiny_data), *FAST, "--trainer.max_epochs", "1",
           "--data.context", "21", "--data.split", "utterance")
    checkpoint = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    cli = run_in(tmp_path, "predict", "--ckpt_path", str(checkpoint), "--data.data_dir", str(tiny_data))
    assert cli.datamodule.context == 21 and cli.model.hparams.input_dim == 21 * 39
    lines = (tmp_path / "prediction.csv").read_text().splitlines()
    assert lines[0] == "Id,Class" and len(lines) == 1 + len(np.load(tiny_data / "test_11.npy"))

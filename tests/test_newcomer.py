"""What a new user sees: fit's closing summary, `--ckpt_path best`, and where evaluations log."""

import os
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import BASELINE, FAST, run_in


def summary_after(text: str) -> list[str]:
    lines = text.splitlines()
    return lines[lines.index("timit_lit: fit finished") + 1 :]


def command(line: str) -> list[str]:
    """A printed `python -m timit_lit ...` line as main()'s arguments."""
    words = shlex.split(line)
    assert words[:3] == ["python", "-m", "timit_lit"], line
    return words[3:]


def test_fit_ends_with_what_it_made_and_the_commands_to_run_next(tiny_data, tmp_path, capsys):
    run_in(tmp_path, "fit", "--config", BASELINE, "--data.data_dir", str(tiny_data), *FAST, "--trainer.max_epochs", "2")
    summary = summary_after(capsys.readouterr().out)
    run = tmp_path / "lightning_logs" / "version_0"
    best_line, last_line, curves, next_line, test, predict = summary
    found = re.fullmatch(r"  best val/acc (0\.\d{4}) at epoch (\d+): (\S+)", best_line)
    best = tmp_path / found.group(3)
    assert best.parent == run / "checkpoints" and best.is_file()
    saved = torch.load(best, weights_only=True)
    assert int(found.group(2)) == saved["epoch"] and best.name == f"epoch={saved['epoch']:02d}-val_acc={found.group(1)}.ckpt"
    assert last_line == "  last epoch (resume with --ckpt_path last): lightning_logs/version_0/checkpoints/last.ckpt"
    assert curves == "  curves: tensorboard --logdir lightning_logs" and next_line == "  next:"
    # Ready to copy: the same --config and data options, and the best checkpoint.
    options = ["--config", BASELINE, "--data.data_dir", str(tiny_data), "--data.batch_size", "256"]
    assert command(test) == ["test", *options, "--ckpt_path", found.group(3)]
    assert command(predict) == ["predict", *options, "--ckpt_path", found.group(3)]
    run_in(tmp_path, *command(predict))
    assert (tmp_path / "prediction.csv").read_text().startswith("Id,Class\n0,")


def test_fit_without_validation_names_its_last_checkpoint(tiny_data, tmp_path, capsys):
    run_in(tmp_path, "fit", "--config", BASELINE, "--data.data_dir", str(tiny_data), *FAST, "--trainer.max_epochs", "1",
           "--data.val_ratio", "0")
    summary = summary_after(capsys.readouterr().out)
    assert summary[0] == "  no validation: the last epoch's checkpoint is lightning_logs/version_0/checkpoints/epoch=00.ckpt"
    assert (tmp_path / "lightning_logs/version_0/checkpoints/epoch=00.ckpt").is_file()
    assert command(summary[-1])[-2:] == ["--ckpt_path", "lightning_logs/version_0/checkpoints/epoch=00.ckpt"]


@pytest.fixture
def two_runs(trained_run, tmp_path):
    """Two copies of the trained run in ``tmp_path/lightning_logs``, version_0 the newer one."""
    for version in ("version_0", "version_1"):
        shutil.copytree(trained_run, tmp_path / "lightning_logs" / version)
    os.utime(tmp_path / "lightning_logs/version_1/checkpoints/last.ckpt", (1e9, 1e9))
    return tmp_path / "lightning_logs"


def chosen(cli):
    """The checkpoint a run loaded (--ckpt_path best resolves relative to the working folder)."""
    return (Path(cli.trainer.default_root_dir) / cli.trainer.ckpt_path).resolve()


def test_ckpt_path_best_is_the_newest_runs_best_checkpoint(tiny_data, best_checkpoint, two_runs, tmp_path):
    common = ["--config", BASELINE, "--data.data_dir", str(tiny_data), "--ckpt_path", "best"]
    for subcommand in ("validate", "test", "predict"):
        cli = run_in(tmp_path, subcommand, *common)
        assert chosen(cli) == two_runs / "version_0" / "checkpoints" / best_checkpoint.name, subcommand
    os.utime(two_runs / "version_0/checkpoints/last.ckpt", (1e8, 1e8))  # now version_1 ran last
    cli = run_in(tmp_path, "validate", *common)
    assert chosen(cli) == two_runs / "version_1" / "checkpoints" / best_checkpoint.name
    assert float(cli.trainer.callback_metrics["val/acc"]) == pytest.approx(float(best_checkpoint.stem[-6:]), abs=1e-4)
    # A fit from it branches off into a new run folder.
    cli = run_in(tmp_path, "fit", *common, *FAST, "--trainer.max_epochs", "3")
    assert cli.trainer.log_dir == str(two_runs / "version_2") and cli.trainer.current_epoch == 3


def test_ckpt_path_best_without_one_is_a_one_line_error(tiny_data, tmp_path, capsys):
    common = ["--config", BASELINE, "--data.data_dir", str(tiny_data), "--ckpt_path", "best"]
    with pytest.raises(SystemExit) as exit_info:
        run_in(tmp_path, "test", *common)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("timit_lit: error: lightning_logs: --ckpt_path best found no */checkpoints/last.ckpt of a run "
                       "(train one first, or pass a checkpoint's path)")
    # The newest run trained without validation: it has a last.ckpt but no best checkpoint.
    run_in(tmp_path, "fit", "--config", BASELINE, "--data.data_dir", str(tiny_data), *FAST, "--trainer.max_epochs", "1",
           "--data.val_ratio", "0")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_in(tmp_path, "predict", *common)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("timit_lit: error: lightning_logs/version_0/checkpoints: --ckpt_path best: "
                              "the newest run has no best-val/acc checkpoint"), err[-1]


def snapshot(folder):
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_predict_leaves_the_runs_as_they_were(tiny_data, two_runs, tmp_path):
    before = snapshot(two_runs)
    run_in(tmp_path, "predict", "--config", BASELINE, "--data.data_dir", str(tiny_data), "--ckpt_path", "best")
    assert snapshot(two_runs) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lightning_logs", "prediction.csv"]  # no config.yaml either


def test_test_results_are_logged_into_the_checkpoints_run(tiny_data, best_checkpoint, two_runs, tmp_path):
    run = two_runs / "version_1"
    config = (run / "config.yaml").read_text()
    checkpoint = run / "checkpoints" / best_checkpoint.name
    elsewhere = tmp_path / "elsewhere"  # the run is found from the checkpoint's path, not the working folder
    elsewhere.mkdir()
    cli = run_in(elsewhere, "test", "--config", BASELINE, "--data.data_dir", str(tiny_data), "--ckpt_path", str(checkpoint))
    assert sorted(p.name for p in two_runs.iterdir()) == ["version_0", "version_1"] and not list(elsewhere.iterdir())
    events = EventAccumulator(str(run)).Reload()
    (point,) = events.Scalars("test/acc")
    assert point.value == pytest.approx(float(cli.trainer.callback_metrics["test/acc"]))
    # At the checkpoint's step, beside the run's curves, which are all still there.
    saved = torch.load(checkpoint, weights_only=True)
    assert point.step == saved["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"]
    assert len(events.Scalars("val/acc")) == 2
    # The run's config stays the fit's; the test command's config is kept beside it.
    assert (run / "config.yaml").read_text() == config
    assert yaml.safe_load((run / "config_test.yaml").read_text())["ckpt_path"] == str(checkpoint)


def test_a_files_utterances_are_recovered_once(tiny_data, best_checkpoint, tmp_path, monkeypatch):
    """The split, the datasets and the decoder all ask the data module, which recovers them once,
    across every file of the folder together."""
    from timit_lit.callbacks import viterbi
    from timit_lit.data import datamodule, folder, row_links

    recovered = []

    def counted(files, *args):
        recovered.append([len(features) for features in files])
        return row_links.recover_utterances(files, *args)

    for module in (folder, datamodule, viterbi):  # wherever it could be called from
        monkeypatch.setattr(module, "recover_utterances", counted, raising=False)
        monkeypatch.setattr(module, "utterance_starts", None, raising=False)  # the per-file recovery: not called

    cli = run_in(tmp_path, "validate", "--config", BASELINE, "--data.data_dir", str(tiny_data), "--ckpt_path",
                 str(best_checkpoint), "--data.split", "utterance", "--decoding.enabled", "true")
    assert "val/acc_viterbi" in cli.trainer.callback_metrics
    sizes = [len(np.load(tiny_data / name, mmap_mode="r")) for name in ("train_11.npy", "test_11.npy")]
    assert recovered == [sizes]  # both files, once

"""Runs that survive faults: SIGKILL and SIGTERM mid-fit, `--ckpt_path last`, determinism.

The signals are real, sent to a `python -m timit_lit fit` subprocess by the process itself
at a fixed batch of the second epoch (tests/helpers/signal_at.py), so that they land at the
same point however busy the machine is, however fast the fit.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import BASELINE, FAST, QUIET, REPO, run_in

EPOCHS = 4
# A narrower network than the baseline's, so that epochs take a fraction of a second.
FIT = ["--config", BASELINE, "--model.hidden_sizes", "[256, 128]", "--model.lr", "0.002",
       "--trainer.max_epochs", str(EPOCHS)]


def start_fit(workdir, data_dir, *args) -> subprocess.Popen:
    """`python -m timit_lit fit` of this copy of the package, in `workdir`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    with open(workdir / "stderr.txt", "w") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "timit_lit", "fit", *FIT, "--data.data_dir", str(data_dir), *QUIET, *args],
            cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=stderr)


def curves(run_dir):
    """Every logged scalar as {step: value}, as TensorBoard shows it (a rerun step replaces the old one)."""
    events = EventAccumulator(str(run_dir)).Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def final_state(run_dir):
    """Every logged curve and the final weights and best checkpoint of a run."""
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    best = sorted(p.name for p in (run_dir / "checkpoints").glob("epoch=*.ckpt"))
    return curves(run_dir), last["state_dict"], last["global_step"], best


def assert_same_run(a, b):
    curves_a, weights_a, step_a, best_a = a
    curves_b, weights_b, step_b, best_b = b
    assert curves_a.keys() == curves_b.keys() and "val/acc" in curves_a
    for tag in curves_a.keys() - {"train/frames_per_s"}:  # wall-clock speed differs run to run
        assert curves_a[tag] == curves_b[tag], tag  # exactly, every epoch
    assert len(curves_a["val/acc"]) == EPOCHS
    assert step_a == step_b and best_a == best_b
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        assert torch.equal(weights_a[name], weights_b[name]), name


@pytest.fixture(scope="module")
def uninterrupted(tiny_data, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    run_in(workdir, "fit", *FIT, "--data.data_dir", str(tiny_data))
    return final_state(workdir / "lightning_logs" / "version_0")


def test_sigkill_mid_epoch_then_resume_last_is_exact(tiny_data, uninterrupted, tmp_path):
    run_dir = tmp_path / "lightning_logs" / "version_0"
    kill = '[{"class_path": "helpers.signal_at.SignalAt", "init_args": {"signal_name": "SIGKILL", "epoch": 1, "batch": 5}}]'
    process = start_fit(tmp_path, tiny_data, "--trainer.callbacks", kill)
    assert process.wait(timeout=300) == -signal.SIGKILL, (tmp_path / "stderr.txt").read_text()
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0

    cli = run_in(tmp_path, "fit", *FIT, "--data.data_dir", str(tiny_data), "--ckpt_path", "last")
    assert cli.trainer.current_epoch == EPOCHS
    # Same folder, curves continued there, and everything ends as if never killed.
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["version_0"]
    assert_same_run(final_state(run_dir), uninterrupted)
    # The run's own config stays; the resuming command's config is kept beside it.
    assert "SignalAt" in (run_dir / "config.yaml").read_text()
    assert "ckpt_path: " + str(Path("lightning_logs/version_0/checkpoints/last.ckpt")) in (run_dir / "config_resume.yaml").read_text()


def test_sigterm_saves_last_checkpoint_and_resume_finishes(tiny_data, uninterrupted, tmp_path):
    run_dir = tmp_path / "lightning_logs" / "version_0"
    last = run_dir / "checkpoints" / "last.ckpt"
    term = '[{"class_path": "helpers.signal_at.SignalAt", "init_args": {"signal_name": "SIGTERM", "epoch": 1, "batch": 5}}]'
    process = start_fit(tmp_path, tiny_data, "--trainer.callbacks", term)
    assert process.wait(timeout=300) == 128 + signal.SIGTERM, (tmp_path / "stderr.txt").read_text()
    stderr = (tmp_path / "stderr.txt").read_text()
    assert "timit_lit: stopped by SIGTERM" in stderr
    # last.ckpt rewritten at the step where the signal came: the second epoch's batch 5 done, no later one.
    stopped = torch.load(last, weights_only=True)
    steps_per_epoch = uninterrupted[2] // EPOCHS
    assert stopped["epoch"] == 1 and stopped["global_step"] == steps_per_epoch + 6

    cli = run_in(tmp_path, "fit", *FIT, "--data.data_dir", str(tiny_data), "--ckpt_path", "last")
    # The interrupted epoch runs again whole, on a fresh shuffle: its 6 batches before the signal count twice.
    assert cli.trainer.current_epoch == EPOCHS
    assert cli.trainer.global_step == stopped["global_step"] + (EPOCHS - 1) * steps_per_epoch
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["version_0"]
    assert len(curves(run_dir)["val/acc"]) == EPOCHS


def test_same_seed_and_config_give_identical_runs(tiny_data, uninterrupted, tmp_path):
    run_in(tmp_path, "fit", *FIT, "--data.data_dir", str(tiny_data))
    assert_same_run(final_state(tmp_path / "lightning_logs" / "version_0"), uninterrupted)


def test_resume_last_picks_the_newest_run_and_continues_its_folder(tiny_data, trained_run, tmp_path):
    logs = tmp_path / "lightning_logs"
    for version in (0, 1):  # two earlier runs; version_0 was the one running last
        (logs / f"version_{version}" / "checkpoints").mkdir(parents=True)
        (logs / f"version_{version}" / "checkpoints" / "last.ckpt").write_bytes(
            (trained_run / "checkpoints" / "last.ckpt").read_bytes())
    os.utime(logs / "version_1" / "checkpoints" / "last.ckpt", (1e9, 1e9))
    cli = run_in(tmp_path, "fit", "--config", BASELINE, "--data.data_dir", str(tiny_data), *FAST,
                 "--trainer.max_epochs", "3", "--ckpt_path", "last")
    assert cli.trainer.log_dir == str(logs / "version_0") and cli.trainer.current_epoch == 3
    assert sorted(p.name for p in logs.iterdir()) == ["version_0", "version_1"]
    assert list(curves(logs / "version_0")["val/acc"]) == [3 * 8 - 1]  # only the third epoch ran


@pytest.mark.parametrize("ckpt_path, message", [
    ("last", "lightning_logs: --ckpt_path last found no */checkpoints/last.ckpt to resume from"),
    ("hpc", ": --ckpt_path hpc found no hpc_ckpt_N.ckpt"),
])
def test_nothing_to_resume_is_a_one_line_error(tiny_data, tmp_path, capsys, ckpt_path, message):
    with pytest.raises(SystemExit) as exit_info:
        run_in(tmp_path, "fit", "--config", BASELINE, "--data.data_dir", str(tiny_data), "--ckpt_path", ckpt_path)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("timit_lit: error: ") and message in err[-1]
    assert not (tmp_path / "lightning_logs").exists()


def test_resume_hpc_takes_the_highest_hpc_checkpoint_and_its_run_folder(tiny_data, trained_run, tmp_path):
    """`--ckpt_path hpc`: what SLURM's requeue signal leaves (hpc_ckpt_N.ckpt in the working folder)."""
    for n in (1, 2):
        (tmp_path / f"hpc_ckpt_{n}.ckpt").write_bytes((trained_run / "checkpoints" / "last.ckpt").read_bytes())
    for version in (0, 1):
        (tmp_path / "lightning_logs" / f"version_{version}").mkdir(parents=True)
    cli = run_in(tmp_path, "fit", "--config", BASELINE, "--data.data_dir", str(tiny_data), *FAST,
                 "--trainer.max_epochs", "3", "--ckpt_path", "hpc")
    assert cli.trainer.ckpt_path == "hpc_ckpt_2.ckpt" and cli.trainer.current_epoch == 3
    # The run that saved it logged to version_0 (recorded in the checkpoint): it goes on there.
    assert cli.trainer.log_dir == str(tmp_path / "lightning_logs" / "version_0")


"""``python -m timit_lit sweep``: Optuna trials as ordinary fits, shared by workers, on tiny generated data."""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

optuna = pytest.importorskip("optuna")

from optuna.trial import TrialState  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from timit_lit.cli import main  # noqa: E402
from timit_lit.sweep.command import check_fit_options  # noqa: E402
from timit_lit.sweep.space import load_space  # noqa: E402

from helpers import BASELINE, QUIET, REPO, run_in  # noqa: E402

SPACE = """
sampler: {class_path: RandomSampler}
space:
  model.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
  model.hidden_sizes: {type: categorical, choices: [[16], [32, 16]]}
"""
# A pruner that prunes every trial at its second validation (epoch 1): val/acc is never above 2.
ALWAYS_PRUNE = "pruner: {class_path: ThresholdPruner, init_args: {lower: 2.0, n_warmup_steps: 1}}\n"


def fit_options(data) -> list[str]:
    """A small, fast fit: the baseline's network narrowed, no figures or phone errors."""
    return ["--config", BASELINE, "--data.data_dir", str(data), "--data.batch_size", "256",
            "--trainer.max_epochs", "1", "--figures.enabled", "false", "--phone_errors.enabled", "false", *QUIET]


def write_space(folder: Path, text: str = SPACE, name: str = "space.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def sweep_command(space: Path, output: Path, *args: str) -> list[str]:
    return ["sweep", "--space", str(space), "--output", str(output), *args]


def worker(cwd: Path, *args: str, **popen) -> subprocess.Popen:
    """A worker as its own process, as on another terminal or machine."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "timit_lit", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def finish(process: subprocess.Popen, timeout: float = 1200) -> str:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return out


def load(output: Path, name: str = "space", storage: str | None = None) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage or f"sqlite:///{output / 'study.db'}")


def states(study) -> list[TrialState]:
    return [t.state for t in study.get_trials(deepcopy=False)]


def hparams_of(run: Path) -> bytes:
    """The trial run's HParams entry (TensorBoard shows a run's first) as its serialised text."""
    events = EventAccumulator(str(run)).Reload()
    return events.summary_metadata["_hparams_/session_start_info"].plugin_data.content


def test_two_workers_share_one_study_and_finish_exactly_n(tiny_data, tmp_path):
    space, output = write_space(tmp_path), tmp_path / "sweep"
    command = sweep_command(space, output, "--trials", "4", *fit_options(tiny_data))
    workers = [worker(tmp_path, *command) for _ in range(2)]
    outputs = [finish(w) for w in workers]
    study = load(output)
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert len(done) == 4  # not one more: the total is the study's, not each worker's
    # Anything else is a trial a worker took when the other had just taken the last one, never run.
    assert all(t.user_attrs.get("surplus") for t in study.get_trials(deepcopy=False) if t.state != TrialState.COMPLETE)
    assert len({t.user_attrs["worker"] for t in done}) == 2, "both workers ran trials"
    runs = sorted(p.name for p in output.glob("trial_*"))
    assert runs == sorted(f"trial_{t.number}" for t in done)  # one run per trial, none shared
    for trial in done:
        run = output / f"trial_{trial.number}"
        assert any(run.glob("checkpoints/epoch=00-val_acc=*.ckpt")) and (run / "checkpoints/last.ckpt").exists()
        # The trial's values in the run's HParams entry, with the metric.
        hparams = hparams_of(run)
        assert b"model.lr" in hparams and b"model.hidden_sizes" in hparams and b"trial" in hparams
        objective = EventAccumulator(str(run)).Reload().Scalars("hp/objective")
        assert objective[-1].value == pytest.approx(trial.value)
    # Each worker ends with the study's table; the last to stop has every trial complete in it.
    tables = [{int(r[0]): r[-2] for r in (line.split() for line in out.splitlines()) if r and r[0].isdigit()}
              for out in outputs]
    assert {t.number: "complete" for t in done} in [{n: s for n, s in t.items() if s == "complete"} for t in tables]
    table = next(line.split() for line in outputs[-1].splitlines() if line.startswith("  trial"))
    assert table == ["trial", "model.lr", "model.hidden_sizes", "val/acc", "state", "minutes"]
    assert (output / "history.png").stat().st_size > 10_000 and (output / "importances.png").stat().st_size > 10_000


def test_best_yaml_fits_as_the_best_trial_did(tiny_data, tmp_path):
    space, output = write_space(tmp_path), tmp_path / "sweep"
    run_in(tmp_path, *sweep_command(space, output, "--trials", "2", *fit_options(tiny_data)))
    best = load(output).best_trial
    config = yaml.safe_load((output / "best.yaml").read_text())
    assert config == {"model": {"lr": best.params["model.lr"], "hidden_sizes": yaml.safe_load(best.params["model.hidden_sizes"])}}
    # fit --config ... --config best.yaml is the best trial's fit: the same config, the same val/acc.
    cli = run_in(tmp_path, "fit", *fit_options(tiny_data), "--config", str(output / "best.yaml"))
    ran = yaml.safe_load((output / f"trial_{best.number}" / "config.yaml").read_text())
    again = yaml.safe_load((tmp_path / "lightning_logs/version_0/config.yaml").read_text())
    assert again["model"] == ran["model"] and again["data"] == ran["data"]
    assert float(cli.trainer.checkpoint_callback.best_model_score) == pytest.approx(best.value, abs=1e-6)


def test_enqueue_config_runs_the_fit_options_values_first_and_once(tiny_data, tmp_path):
    space, output = write_space(tmp_path), tmp_path / "sweep"
    configured = [*fit_options(tiny_data), "--model.lr", "0.004", "--model.hidden_sizes", "[32, 16]"]
    run_in(tmp_path, *sweep_command(space, output, "--trials", "1", "--enqueue-config", *configured))
    (first,) = load(output).trials
    assert first.state == TrialState.COMPLETE and first.user_attrs["config"] is True
    assert first.params == {"model.lr": 0.004, "model.hidden_sizes": "[32, 16]"}
    ran = yaml.safe_load((output / "trial_0" / "config.yaml").read_text())
    model = ran["model"]["init_args"]
    assert model["lr"] == 0.004 and model["hidden_sizes"] == [32, 16]
    # The same command continued: the values are in the study already, not queued again.
    run_in(tmp_path, *sweep_command(space, output, "--trials", "2", "--enqueue-config", *configured))
    study = load(output)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert "config" not in study.trials[1].user_attrs and study.trials[1].params["model.lr"] != 0.004


def test_enqueue_config_refuses_values_the_space_does_not_hold(tiny_data, tmp_path, capsys):
    space, output = write_space(tmp_path), tmp_path / "sweep"
    # The baseline's own hidden_sizes, [1024, 512, 128], is not among the space's choices.
    line = fails_with(tmp_path, capsys, *sweep_command(space, output, "--enqueue-config", *fit_options(tiny_data),
                                                      "--model.lr", "0.004"))
    assert "space.yaml: space: model.hidden_sizes: --enqueue-config: the fit options' value [1024, 512, 128] " \
           "is not in the space (choices [16], [32, 16])" in line, line
    line = fails_with(tmp_path, capsys, *sweep_command(space, output, "--enqueue-config", *fit_options(tiny_data),
                                                      "--model.hidden_sizes", "[16]"))
    assert "space.yaml: space: model.lr: --enqueue-config: the fit options' value 0.0001 is not in the space " \
           "(0.001 to 0.01)" in line, line
    assert not output.exists(), "nothing written"


def test_pruned_trials_stop_keep_their_runs_and_a_rerun_continues(tiny_data, tmp_path):
    space, output = write_space(tmp_path, ALWAYS_PRUNE + SPACE), tmp_path / "sweep"
    command = sweep_command(space, output, "--trials", "2", *fit_options(tiny_data), "--trainer.max_epochs", "4")
    run_in(tmp_path, *command)
    study = load(output)
    assert states(study) == [TrialState.PRUNED] * 2
    for trial in study.trials:
        assert sorted(trial.intermediate_values) == [0, 1]  # reported each epoch, stopped after the second
        run = output / f"trial_{trial.number}"
        curves = EventAccumulator(str(run)).Reload()
        assert len(curves.Scalars("val/acc")) == 2  # 2 of the 4 epochs trained
        assert (run / "checkpoints/last.ckpt").exists() and b"model.lr" in hparams_of(run)
    # The same command with a larger total continues the study.
    run_in(tmp_path, *command[:command.index("--trials") + 1], "3", *command[command.index("--trials") + 2:])
    assert states(load(output)) == [TrialState.PRUNED] * 3 and (output / "trial_2").is_dir()


def test_a_killed_worker_leaves_a_failed_trial_and_a_rerun_completes_the_study(tiny_data, tmp_path):
    space, output = write_space(tmp_path), tmp_path / "sweep"
    common = sweep_command(space, output, "--trials", "1", "--heartbeat", "1", *fit_options(tiny_data))
    killed = worker(tmp_path, *common, "--trainer.max_epochs", "1000")  # long enough to be killed training
    deadline = time.time() + 900
    while not list(output.glob("trial_0/events.out.tfevents.*")):
        assert killed.poll() is None and time.time() < deadline, killed.stderr.read()[-3000:] if killed.poll() else ""
        time.sleep(0.2)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    assert states(load(output)) == [TrialState.RUNNING]  # as the kill left it
    time.sleep(3)  # its heartbeat is now older than twice --heartbeat 1
    run_in(tmp_path, *common)
    first, retry = load(output).trials
    assert first.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    assert retry.system_attrs["failed_trial"] == 0 and retry.params == first.params  # its values, run again


BAD_SPACES = {
    "not a mapping": ("- model.lr\n", r"space\.yaml: a space file is a mapping"),
    "unknown key": ("spaces: {}\n", r"space\.yaml: spaces: not a key of a space file"),
    "bad type": ("space:\n  model.lr: {type: uniform, low: 0.1, high: 1}\n",
                 r"space\.yaml: space: model\.lr: type must be float, int or categorical, not 'uniform'"),
    "low above high": ("space:\n  model.lr: {type: float, low: 0.1, high: 0.01}\n",
                       r"space\.yaml: space: model\.lr: .*low.*high"),
    "log of zero": ("space:\n  model.dropout: {type: float, low: 0.0, high: 0.5, log: true}\n",
                    r"space\.yaml: space: model\.dropout: .*low"),
    "empty choices": ("space:\n  data.batch_size: {type: categorical, choices: []}\n",
                      r"space\.yaml: space: data\.batch_size: choices must be a non-empty list"),
    "unknown pruner": ("pruner: {class_path: EagerPruner}\nspace:\n  model.lr: {type: float, low: 0.001, high: 0.01}\n",
                       r"space\.yaml: pruner: no class EagerPruner"),
    "unknown fit option": ("space:\n  model.width: {type: int, low: 16, high: 64}\n",
                           r"space\.yaml: space: model\.width: fit does not take --model\.width 16: .*width"),
    "value fit does not take": ("space:\n  data.batch_size: {type: categorical, choices: [64, large]}\n",
                                r"space\.yaml: space: data\.batch_size: fit does not take --data\.batch_size large"),
}


def fails_with(tmp_path, capsys, *args) -> str:
    """The sweep exits with status 2 and one line, before any trial trains."""
    with pytest.raises(SystemExit) as stop:
        run_in(tmp_path, *args)
    err = capsys.readouterr().err
    assert stop.value.code == 2, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("timit_lit: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    return errors[0]


@pytest.mark.parametrize("case", BAD_SPACES, ids=list(BAD_SPACES))
def test_a_bad_space_file_gives_one_line_naming_the_file_and_key(case, tiny_data, tmp_path, capsys):
    text, expected = BAD_SPACES[case]
    space, output = write_space(tmp_path, text), tmp_path / "sweep"
    line = fails_with(tmp_path, capsys, *sweep_command(space, output, *fit_options(tiny_data)))
    assert re.search(expected, line), line
    assert not output.exists(), "nothing written"


def test_a_metric_never_logged_is_said_at_the_first_validation(tiny_data, tmp_path, capsys):
    space, output = write_space(tmp_path, "metric: val/accuracy\n" + SPACE), tmp_path / "sweep"
    line = fails_with(tmp_path, capsys, *sweep_command(space, output, *fit_options(tiny_data), "--trainer.max_epochs", "5"))
    assert "space.yaml: metric: val/accuracy is not logged by the validation (it logs " in line and "val/acc" in line
    (trial,) = load(output).trials
    assert trial.state == TrialState.FAIL
    assert len(EventAccumulator(str(output / "trial_0")).Reload().Scalars("val/acc")) == 1  # stopped there


@pytest.mark.parametrize("url, expected", [
    ("nonsense", r"--storage nonsense: cannot open it as a study database"),
    ("postgresql://sweeper:secret@127.0.0.1:1/none", r"--storage postgresql://sweeper:\*\*\*@127\.0\.0\.1:1/none: "),
], ids=["malformed", "unreachable"])
def test_a_bad_storage_gives_one_line(url, expected, tiny_data, tmp_path, capsys):
    space = write_space(tmp_path)
    line = fails_with(tmp_path, capsys, *sweep_command(space, tmp_path / "sweep", "--storage", url, *fit_options(tiny_data)))
    assert re.search(expected, line) and "secret" not in line, line


@pytest.mark.parametrize("key, text", [("direction", "direction: minimize\n"), ("metric", "metric: val/loss\n")])
def test_a_study_of_another_metric_or_direction_is_refused(key, text, tiny_data, tmp_path, capsys):
    output = tmp_path / "sweep"
    output.mkdir()
    storage = f"sqlite:///{output / 'study.db'}"
    existing = optuna.create_study(study_name="space", storage=storage, direction="maximize")
    existing.set_user_attr("metric", "val/acc")
    space = write_space(tmp_path, text + SPACE)
    line = fails_with(tmp_path, capsys, *sweep_command(space, output, *fit_options(tiny_data)))
    assert f"space.yaml: {key}: the study 'space' in {storage} " in line and "val/acc" in line, line
    assert load(output).trials == []


SHIPPED = [("strong_mlp.yaml", "strong_mlp.yaml"), ("demo.yaml", "demo.yaml"), ("conformer.yaml", "conformer.yaml"),
           ("recurrent.yaml", "recurrent.yaml")]


def test_the_shipped_spaces_parse_with_their_configs():
    for space, config in SHIPPED:
        check_fit_options(load_space(REPO / "configs/sweeps" / space), ["--config", str(REPO / "configs" / config)],
                          Path("unused"), fit=main)


# PostgreSQL: several machines share one database. A real server, started for the test.
def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@pytest.fixture
def postgres(tmp_path):
    """A PostgreSQL server in a temporary folder on a free port; its URL. As root (CI), it
    runs as the ``postgres`` user, since PostgreSQL refuses to run as root."""
    pytest.importorskip("psycopg", reason='needs psycopg (pip install "psycopg[binary]")')
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("needs PostgreSQL's server binaries (apt-get install postgresql)")
    as_user = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("needs runuser to start PostgreSQL as a user other than root")
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("needs the postgres user to start PostgreSQL as a user other than root")
        as_user = ["runuser", "-u", "postgres", "--"]
    folder = Path(f"/tmp/timit_lit_pg_{os.getpid()}_{tmp_path.name}")
    folder.mkdir()
    if as_user:
        shutil.chown(folder, "postgres")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    run = lambda *args: subprocess.run([*as_user, *args], check=True, capture_output=True, text=True, timeout=120)  # noqa: E731
    run(str(bin_dir / "initdb"), "-D", str(folder / "data"), "-U", "sweeper", "--auth=trust")
    run(str(bin_dir / "pg_ctl"), "-D", str(folder / "data"), "-l", str(folder / "log"), "-w", "-o",
        f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start")
    try:
        yield f"postgresql://sweeper@127.0.0.1:{port}/postgres"
    finally:
        run(str(bin_dir / "pg_ctl"), "-D", str(folder / "data"), "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow  # a server started; the same sharing on SQLite is test_two_workers_share_one_study_and_finish_exactly_n
def test_two_workers_share_a_postgresql_study(postgres, tiny_data, tmp_path):
    space = write_space(tmp_path)
    # Two "machines": each its own output folder, one database.
    workers = [worker(tmp_path, *sweep_command(space, tmp_path / f"machine_{k}", "--storage", postgres, "--trials", "3",
                                               *fit_options(tiny_data))) for k in range(2)]
    for w in workers:
        finish(w)
    study = load(tmp_path, storage=postgres)
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert len(done) == 3 and len({t.user_attrs["worker"] for t in done}) == 2
    runs = sorted(p.name for p in tmp_path.glob("machine_*/trial_*"))
    assert runs == sorted(f"trial_{t.number}" for t in done)
    assert not (tmp_path / "machine_0/study.db").exists()  # the database is the server's


@pytest.mark.slow  # two DDP trials: five processes in all
def test_a_ddp_trial_runs_on_two_processes_and_is_pruned_on_both(tiny_data, tmp_path):
    """--trainer.devices 2 --trainer.strategy ddp: Lightning starts the second process with the
    worker's command line; it joins the worker's trial, and stops when rank 0's pruner says so."""
    space, output = write_space(tmp_path, ALWAYS_PRUNE + SPACE), tmp_path / "sweep"
    finish(worker(tmp_path, *sweep_command(space, output, "--trials", "2", *fit_options(tiny_data),
                                           "--trainer.max_epochs", "3", "--trainer.accelerator", "cpu",
                                           "--trainer.devices", "2", "--trainer.strategy", "ddp")))
    trials = load(output).trials  # two: the second DDP trial of a worker starts its processes as the first did
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2
    assert all(sorted(t.intermediate_values) == [0, 1] for t in trials)
    assert sorted(p.name for p in output.iterdir() if p.is_dir()) == ["trial_0", "trial_1"]
    for run in ("trial_0", "trial_1"):
        assert len(EventAccumulator(str(output / run)).Reload().Scalars("val/acc")) == 2  # 2 of 3 epochs

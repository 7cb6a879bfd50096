"""``python -m timit_lit sweep --space SPACE.yaml [--trials N] [--storage URL] [--study NAME]
[--output DIR] [--enqueue-config] FIT_OPTIONS...``: one worker of a sweep.

Each trial is an ordinary ``fit`` (:func:`timit_lit.cli.main`, which hands itself to
:func:`sweep`: the sweep runs on the command line, and imports none of it) of ``FIT_OPTIONS`` plus the
trial's values (``--model.lr 0.003 ...``), with the forced callbacks and checkpoints of any
fit, logging to its own TensorBoard run ``DIR/trial_N``, and :class:`TrialReport` telling
Optuna each validation's metric. Any number of workers started with the same command (on
one machine, or on several with one database URL) share the study and stop when it has
``N`` finished trials; running the command again continues it. A worker ends by printing
the study's table and writing ``best.yaml`` and the pictures of the search into ``DIR``.
With ``--enqueue-config`` the study's first trial is the fit options' own values (Optuna's
``enqueue_trial``): the recipe as configured is a row of the table, beside what the search found.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import socket
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import optuna
import yaml
from optuna.study import MaxTrialsCallback

from timit_lit.default_logger import default_logger
from timit_lit.errors import InputError
from timit_lit.sweep.report import TrialReport
from timit_lit.sweep.results import CONFIG_TRIAL, SURPLUS, counts, table, write_best, write_pictures
from timit_lit.sweep.space import SearchSpace, fit_arguments, load_space
from timit_lit.sweep.study import COUNTED, counted, finished, open_storage, open_study, shown_url, taken_before

# Set while a trial trains: the processes Lightning starts for a DDP trial run this worker's
# own command line, and find here which trial they belong to.
TRIAL_ENV = "TIMIT_LIT_SWEEP_TRIAL"

# What runs a trial's fit: timit_lit.cli.main (its command line as a list, and callbacks=).
Fit = Callable[..., Any]


class TrialExit(Exception):
    """A trial's fit exited (bad input it has reported, SIGTERM): the worker exits as it did."""

    def __init__(self, code):
        super().__init__(f"the trial's fit exited with status {code}")
        self.code = code


class SurplusTrial(Exception):
    """A trial taken after the study had its total: not run (another worker took the last one)."""


class _TrialLog(logging.Filter):
    """Optuna logs a failed trial with its traceback. These fail with their reason said in one
    line already (the fit's error, an InputError), or were never run (surplus): their line
    stays without the traceback, and a surplus trial is said by the worker instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, SurplusTrial):
            return False
        if isinstance(error, (TrialExit, InputError)):
            record.exc_info = record.exc_text = None
        return True


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2 (timit_lit.cli.main prints it)
        raise InputError(f"sweep: {message}")


def parse_command(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The sweep's own options; everything else is FIT_OPTIONS, given to every trial."""
    parser = _Parser(prog="python -m timit_lit sweep", allow_abbrev=False,
                     description="Search fit's options with Optuna: each trial is a fit of FIT_OPTIONS plus the "
                                 "trial's values (docs/sweeps.md).",
                     usage="%(prog)s --space SPACE.yaml [--trials N] [--storage URL] [--study NAME] "
                           "[--output DIR] [--heartbeat SECONDS] [--enqueue-config] FIT_OPTIONS...")
    parser.add_argument("--space", required=True, help="the search: metric, direction, pruner, sampler, space")
    parser.add_argument("--trials", type=int, default=20, help="the study's total of finished trials (default 20)")
    parser.add_argument("--storage", help="an Optuna RDB URL (default: sqlite:///DIR/study.db)")
    parser.add_argument("--study", help="the study's name (default: SPACE's file name without .yaml)")
    parser.add_argument("--output", help="the trials' runs, best.yaml and pictures (default lightning_logs/sweeps/STUDY)")
    parser.add_argument("--heartbeat", type=int, default=60,
                        help="seconds between a running trial's heartbeats; a trial silent for twice that (its "
                             "worker killed) is marked failed and queued again (default 60)")
    parser.add_argument("--enqueue-config", action="store_true",
                        help="queue the fit options' own values of the searched options as a trial (once a study), "
                             "so the table shows the configured recipe beside the search's")
    args, fit_options = parser.parse_known_args(argv)
    if args.trials < 1 or args.heartbeat < 1:
        raise InputError(f"sweep: --{'trials' if args.trials < 1 else 'heartbeat'} must be at least 1")
    if fit_options[:1] == ["fit"]:
        fit_options = fit_options[1:]
    return args, fit_options


def logger_arguments(output: Path, number: int) -> list[str]:
    """The trial's TensorBoard run, ``output/trial_N`` (its checkpoints in it): a folder per
    trial number, which workers running at once never share."""
    logger = default_logger(str(output), name="", version=f"trial_{number}")
    return ["--trainer.logger", json.dumps(logger)]


def trial_arguments(fit_options: list[str], values: dict, output: Path, number: int) -> list[str]:
    return ["fit", *fit_options, *fit_arguments(values), *logger_arguments(output, number)]


def check_fit_options(space: SearchSpace, fit_options: list[str], output: Path, fit: Fit) -> None:
    """Parse ``fit`` (``--print_config``: nothing built, nothing trained) with the fit options
    and sets of the space's values that hold every choice and a value of every range: an
    option fit does not have, or a value it does not take, is named with its space key."""
    for values in space.probes():
        error = _parse_error(fit, trial_arguments(fit_options, values, output, 0))
        if error is None:
            continue
        key = next((k for k in values if k in error), None)
        if key is None and _parse_error(fit, trial_arguments(fit_options, {}, output, 0)) is not None:
            raise InputError(f"sweep: FIT_OPTIONS: {error}")
        key = key or next(iter(values))
        raise space.error(f"space: {key}", f"fit does not take --{key} {fit_arguments({key: values[key]})[1]}: {error}")


def configured_params(space: SearchSpace, fit_options: list[str], fit: Fit) -> dict:
    """The fit options' own values of the searched options (``fit --print_config``: the config
    as a fit would run it), as the trial ``--enqueue-config`` queues."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()), \
            contextlib.suppress(SystemExit):
        fit(["fit", *fit_options, "--print_config"])
    return space.params_of(yaml.safe_load(out.getvalue()) or {})


def _parse_error(fit: Fit, args: list[str]) -> str | None:
    """What ``fit`` says of these options (its one-line error), or None when it takes them."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            fit([*args, "--print_config"])
    except SystemExit as stop:
        if not stop.code:
            return None
    except Exception as error:  # noqa: BLE001 - anything else fit would stop on, said in one line
        return " ".join(str(error).split()) or type(error).__name__
    lines = [line.removeprefix("timit_lit: error: ") for line in err.getvalue().splitlines() if "error:" in line]
    return lines[-1] if lines else "rejected"


class Worker:
    """Runs the study's trials until it has its total, then reports."""

    def __init__(self, study: optuna.Study, space: SearchSpace, total: int, fit_options: list[str], output: Path,
                 storage: str, fit: Fit):
        self.study, self.space, self.total = study, space, total
        self.fit_options, self.output, self.storage, self.fit = fit_options, output, storage, fit

    def run(self) -> None:
        # Trials of killed workers first: failed (and queued again), they no longer count as running.
        optuna.storages.fail_stale_trials(self.study)
        if counted(self.study) >= self.total:
            return
        try:
            self.study.optimize(self.objective, callbacks=[MaxTrialsCallback(self.total, states=COUNTED)],
                                gc_after_trial=True)
        except SurplusTrial:
            pass
        except TrialExit as stop:
            raise SystemExit(stop.code) from None

    def objective(self, trial: optuna.Trial) -> float:
        # Trial numbers are given in the order trials are taken: one whose earlier trials
        # already make the total was taken by a worker racing another for the last one.
        if taken_before(self.study, trial.number) >= self.total:
            trial.set_user_attr(SURPLUS, True)
            self.study.stop()
            print(f"timit_lit: sweep {self.study.study_name}: trial {trial.number} not run: the study has its "
                  f"{self.total} trials (another worker took the last)", file=sys.stderr, flush=True)
            raise SurplusTrial()
        values = self.space.suggest(trial)
        run = self.output / f"trial_{trial.number}"
        if run.exists():
            raise InputError(f"{run}: exists already, from another study: this study's trial {trial.number} "
                             f"would log into it (give another --output)")
        trial.set_user_attr("run", str(run))
        trial.set_user_attr("fit_options", self.fit_options)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        print(f"timit_lit: sweep {self.study.study_name}: trial {trial.number} ({finished(self.study)} of "
              f"{self.total} finished): {' '.join(fit_arguments(values))}", file=sys.stderr, flush=True)
        report = TrialReport(trial, trial.number, values, self.space.metric, self.space.direction, str(self.space.path))
        # Each trial starts from the worker's environment: a DDP fit leaves LOCAL_RANK, WORLD_SIZE,
        # MASTER_PORT ... in it, which would make the next trial's Lightning take its processes as
        # started already, and wait for them.
        environment = dict(os.environ)
        os.environ[TRIAL_ENV] = str(trial.number)
        try:
            self.fit(trial_arguments(self.fit_options, values, self.output, trial.number), callbacks=[report])
        except SystemExit as stop:
            raise TrialExit(stop.code) from None
        finally:
            os.environ.clear()
            os.environ.update(environment)
        if report.best is None:
            raise self.space.error("metric", f"{self.space.metric} was never logged: trial {trial.number}'s fit "
                                             f"ran no validation (data.val_ratio 0? trainer.limit_val_batches 0?)")
        trial.set_user_attr("best", report.best)
        if report.pruned_at is not None:
            raise optuna.TrialPruned(f"after validation {report.pruned_at}")
        return report.best

    def report(self) -> None:
        state = ", ".join(f"{n} {s}" for s, n in counts(self.study).items()) or "no trials"
        print(f"\ntimit_lit: sweep {self.study.study_name} ({self.storage}): {finished(self.study)} of "
              f"{self.total} trials finished ({state}); runs in {self.output}")
        print("\n".join("  " + line for line in table(self.study, self.space)))
        self.output.mkdir(parents=True, exist_ok=True)
        best = write_best(self.output / "best.yaml", self.study, self.space, self.storage)
        if best is not None:
            print(f"  best: trial {best.number}, {self.space.metric} {best.value:.4f}: {self.output / 'best.yaml'}")
        for line in write_pictures(self.output, self.study):
            print(f"  {line}")
        sys.stdout.flush()


def trial_process(args: argparse.Namespace, space: SearchSpace, name: str, output: Path, url: str,
                  fit_options: list[str], fit: Fit) -> None:
    """One of the processes Lightning starts for a DDP trial (``--trainer.devices N
    --trainer.strategy ddp``), with the worker's own command line: the same fit of the same
    trial, its metric reported by rank 0 (the worker)."""
    number = int(os.environ[TRIAL_ENV])
    study = optuna.load_study(study_name=name, storage=open_storage(url, heartbeat=None))
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    values = space.values(trial.params)
    report = TrialReport(None, number, values, space.metric, space.direction, str(space.path))
    fit(trial_arguments(fit_options, values, output, number), callbacks=[report])


def sweep(argv: list[str], fit: Fit) -> None:
    """The sweep command, each trial run by ``fit`` (``timit_lit.cli.main``, which also prints
    the command's InputErrors in one line, exit 2)."""
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # Each trial calls timit_lit.cli.main with its own arguments, by design.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    for handler in logging.getLogger("optuna").handlers:
        if not any(isinstance(f, _TrialLog) for f in handler.filters):
            handler.addFilter(_TrialLog())
    args, fit_options = parse_command(argv)
    space = load_space(args.space)
    name = args.study or Path(args.space).stem
    output = Path(args.output) if args.output else Path("lightning_logs", "sweeps", name)
    url = args.storage or f"sqlite:///{(output / 'study.db').resolve()}"
    if TRIAL_ENV in os.environ:
        return trial_process(args, space, name, output, url, fit_options, fit)
    check_fit_options(space, fit_options, output, fit)
    configured = configured_params(space, fit_options, fit) if args.enqueue_config else None
    if args.storage is None:
        output.mkdir(parents=True, exist_ok=True)
    study = open_study(open_storage(url, args.heartbeat), name, space)
    if configured is not None and counted(study) < args.trials:
        # Once a study: skipped where a trial (queued, run or running) has these values already.
        study.enqueue_trial(configured, user_attrs={CONFIG_TRIAL: True}, skip_if_exists=True)
    worker = Worker(study, space, args.trials, fit_options, output, shown_url(url), fit)
    worker.run()
    worker.report()

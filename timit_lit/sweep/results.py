"""What a sweep's worker leaves when it ends: the table of the study's trials, ``best.yaml``
(the best trial's values as a config to layer on the sweep's fit options) and Optuna's
pictures of the search."""

from __future__ import annotations

import datetime
import shlex
import warnings
from pathlib import Path

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from timit_lit.atomic import atomic_file, atomic_path
from timit_lit.sweep.space import SearchSpace, as_config

SURPLUS = "surplus"  # user attr of a trial a worker took past the total, then left unrun
CONFIG_TRIAL = "config"  # user attr of the trial --enqueue-config queued: the fit options' own values


def ran(study: optuna.Study) -> list[FrozenTrial]:
    """The study's trials, less those taken past the total and never run."""
    return [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get(SURPLUS)]


def _state(trial: FrozenTrial) -> str:
    state = trial.state.name.lower()
    if trial.state == TrialState.PRUNED:
        state = f"pruned after {len(trial.intermediate_values)} validations"
    if trial.user_attrs.get(CONFIG_TRIAL):
        state += " (the fit options' values)"
    retry = trial.system_attrs.get("failed_trial")  # RetryFailedTrialCallback's: the killed trial's number
    return state if retry is None else f"{state} (retry of {retry})"


def _minutes(trial: FrozenTrial) -> str:
    if trial.datetime_start is None:
        return ""
    end = trial.datetime_complete or datetime.datetime.now()
    return f"{(end - trial.datetime_start).total_seconds() / 60:.1f}"


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace(" ", "")


def table(study: optuna.Study, space: SearchSpace) -> list[str]:
    """One row per trial: its number, values, metric (its best validation), state, minutes."""
    keys = [d.key for d in space.dimensions]
    header = ["trial", *keys, space.metric, "state", "minutes"]
    rows = [header]
    for trial in ran(study):
        values = space.values(trial.params)
        metric = trial.user_attrs.get("best", trial.value)  # a pruned trial's too: its best validation
        rows.append([str(trial.number), *(_short(values[k]) if k in values else "" for k in keys),
                     f"{metric:.4f}" if metric is not None else "", _state(trial), _minutes(trial)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    return study.best_trial


def write_best(path: Path, study: optuna.Study, space: SearchSpace, storage: str) -> FrozenTrial | None:
    """``best.yaml``: the best complete trial's values, nested as a config file, with the
    command that layers it on the fit options the trial ran with."""
    best = best_trial(study)
    if best is None:
        return None
    fit_options = best.user_attrs.get("fit_options", [])
    command = shlex.join(["python", "-m", "timit_lit", "fit", *fit_options, "--config", str(path)])
    header = (f"# The best trial of the sweep {study.study_name!r} ({storage}): trial {best.number}, "
              f"{space.metric} {best.value:.4f} ({space.direction}), run {best.user_attrs.get('run', '?')}.\n"
              f"# Its values, to layer on the fit options it ran with:\n#   {command}\n")
    with atomic_file(path, "w") as f:
        f.write(header + yaml.safe_dump(as_config(space.values(best.params)), sort_keys=False))
    return best


def write_pictures(output: Path, study: optuna.Study) -> list[str]:
    """Optuna's matplotlib pictures of the search, as PNG files: the optimisation history
    (every finished trial's value, and the best so far) and the parameters' importances
    (which needs two complete trials at least). The names written, or why not."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display
    from matplotlib import pyplot
    from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

    said = []
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    plots = {"history.png": (plot_optimization_history, 1), "importances.png": (plot_param_importances, 2)}
    for name, (plot, needs) in plots.items():
        if len(complete) < needs:
            said.append(f"no {name}: it needs {needs} complete trial{'s' * (needs > 1)}")
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                axes = plot(study)
            except (ValueError, RuntimeError) as error:  # e.g. importances of a space with one value
                said.append(f"no {name}: {error}")
                continue
        figure = axes.figure
        figure.set_size_inches(9, 5.5)
        figure.tight_layout()
        with atomic_path(output / name) as tmp:
            figure.savefig(tmp, dpi=100, format="png")
        pyplot.close(figure)
        said.append(str(output / name))
    return said


def counts(study: optuna.Study) -> dict[str, int]:
    trials = ran(study)
    return {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState
            if any(t.state == state for t in trials)}


"""The study a sweep's workers share: its storage, opened and checked, and its trial count.

Every worker of a sweep (one machine or several) opens the same study in the same
database: Optuna's ``RDBStorage`` (an SQLite file on one machine, PostgreSQL or MySQL
for several). Each running trial's worker writes a heartbeat into it; a trial whose
heartbeat is older than twice the interval (its worker was killed: ``kill -9``, a pre-empted
job) is marked failed by the next worker that starts a trial, and Optuna's
``RetryHeartbeatStaleTrialCallback`` queues its values again, so no trial is lost.
"""

from __future__ import annotations

import time
import warnings

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from timit_lit.errors import InputError
from timit_lit.sweep.space import SearchSpace

# The trials that count towards --trials N: finished, or taken by a worker. (A killed trial's
# values queued again, WAITING, are taken by the next trial a worker starts.)
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
# Those that a trial taken after them counts: the queued ones too, which a worker takes before it.
TAKEN = (*COUNTED, TrialState.WAITING)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def shown_url(url: str) -> str:
    """The storage URL as errors and tables print it: without its password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # not a URL: shown as given
        return url


def open_storage(url: str, heartbeat: int | None) -> RDBStorage:
    """The study database, with heartbeats every ``heartbeat`` seconds (``None``: none, for
    the processes of a DDP trial, whose worker beats for them)."""
    engine_kwargs = {}
    if url.startswith("sqlite"):
        # Workers of one machine write the same file: wait for its lock rather than fail.
        engine_kwargs = {"connect_args": {"timeout": 120}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return _storage(url, engine_kwargs, heartbeat)
        except ImportError as error:
            raise InputError(f"--storage {shown_url(url)}: its database driver is not installed "
                             f"({error.__cause__ or error}; for PostgreSQL: pip install 'psycopg[binary]')") from None
        except Exception as error:  # noqa: BLE001 - whatever stops the database opening is the URL's
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            reason = next((line for line in lines if not line.startswith(("(Background", "[SQL"))), type(error).__name__)
            raise InputError(f"--storage {shown_url(url)}: cannot open it as a study database ({reason})") from None


def _storage(url: str, engine_kwargs: dict, heartbeat: int | None, attempts: int = 5) -> RDBStorage:
    """``RDBStorage``, tried again when another worker is creating the database's tables at the
    same moment (two workers started at once on a new database: one of them loses the race)."""
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(attempts):
        try:
            return RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1)
                              if heartbeat else None)
        except (IntegrityError, OperationalError) as error:
            racing = isinstance(error, IntegrityError) or "locked" in str(error) or "already exists" in str(error)
            if not racing or attempt == attempts - 1:
                raise
            time.sleep(1 + attempt)
    raise AssertionError("not reached")


def open_study(storage: RDBStorage, name: str, space: SearchSpace) -> optuna.Study:
    """The study ``name``, created if new; one that exists must optimise the same metric in
    the same direction, and have drawn each of the space's options from a compatible
    distribution (Optuna's rule), else the space file's key is named."""
    study = optuna.create_study(storage=storage, study_name=name, direction=space.direction,
                                sampler=space.sampler, pruner=space.pruner, load_if_exists=True)
    metric = study.user_attrs.get("metric")
    direction = study.direction.name.lower()
    where = f"the study {name!r} in {shown_url(storage.url)}"
    if metric is not None and metric != space.metric:
        raise space.error("metric", f"{where} optimises {metric} ({direction}), not {space.metric} "
                                    f"(another --study name starts a new study)")
    if direction != space.direction:
        raise space.error("direction", f"{where} is to {direction} {metric or 'its metric'}, not {space.direction} "
                                       f"(another --study name starts a new study)")
    if metric is None:
        study.set_user_attr("metric", space.metric)
    for trial in study.get_trials(deepcopy=False):
        for dimension in space.dimensions:
            drawn = trial.distributions.get(dimension.key)
            if drawn is None:
                continue
            try:
                optuna.distributions.check_distribution_compatibility(drawn, dimension.distribution)
            except ValueError as error:
                raise space.error(f"space: {dimension.key}", f"{where} drew it from another distribution "
                                  f"(trial {trial.number}: {drawn}): {error}") from None
    return study


def counted(study: optuna.Study) -> int:
    """The trials that count towards the total: finished or running."""
    return len(study.get_trials(deepcopy=False, states=COUNTED))


def taken_before(study: optuna.Study, number: int) -> int:
    """The trials numbered below ``number`` that are finished, running or queued: trial
    ``number`` is one too many when they make the total already."""
    return sum(1 for t in study.get_trials(deepcopy=False, states=TAKEN) if t.number < number)


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))

"""Hyperparameter sweeps with Optuna: ``python -m timit_lit sweep --space SPACE.yaml ... FIT_OPTIONS``.

- ``space.py``: SPACE.yaml (metric, direction, pruner, sampler, the searched options), checked;
- ``study.py``: the study's storage (SQLite, PostgreSQL, ...), heartbeats, the trial count;
- ``report.py``: TrialReport, the callback of each trial's fit (metric to the pruner, HParams);
- ``results.py``: the end's table, ``best.yaml`` and pictures;
- ``command.py``: the command, one worker of a sweep.

Optuna is an optional dependency (``pip install -e ".[sweep]"``).
"""

from timit_lit.sweep.command import sweep

__all__ = ["sweep"]

"""TrialReport: what a sweep's trial tells Optuna while it trains, and what it shows in TensorBoard.

Our own callback rather than optuna-integration's ``PyTorchLightningPruningCallback``: that
one imports ``lightning.pytorch``, and this project runs on ``pytorch_lightning`` (the two
packages' ``Callback`` and ``Trainer`` are distinct classes: a ``pytorch_lightning`` Trainer
refuses a ``lightning.pytorch`` callback).
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from pytorch_lightning import LightningModule, Trainer
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import TensorBoardLogger

from timit_lit.errors import InputError

OBJECTIVE = "hp/objective"  # the trial's value so far, the metric of its HParams entry


class TrialReport(Callback):
    """After each validation: reports the metric to the trial (step = the validation's index,
    the epoch with one validation per epoch), asks the pruner, and stops the fit when it says
    prune (``trainer.should_stop``: the epoch ends as any other, checkpoints and run kept; the
    sweep then marks the trial pruned). The trial's value is the best of its validations (the
    epoch its best checkpoint holds), kept in :attr:`best`.

    TensorBoard: at the first validation, the run's HParams entry, the trial's values (the
    swept options, dotted, and ``trial``, its number) with ``hp/objective``, the value so far,
    logged again whenever it improves. TensorBoard shows a run's first HParams entry, so
    this one comes before :class:`~timit_lit.callbacks.RunConfig`'s (the run's whole config,
    which stays in its ``config.yaml``).

    Under DDP, ``trial`` is the worker's trial on rank 0 and ``None`` on the other processes:
    rank 0 reports and asks the pruner, and its answer is broadcast so that every process
    stops at the same epoch.

    A metric the validation does not log is bad input (the space file's ``metric``), said at
    the first validation.
    """

    def __init__(self, trial: optuna.Trial | None, number: int, values: dict[str, Any], metric: str,
                 direction: str, space_file: str):
        self.trial = trial
        self.number = number
        self.values = values
        self.metric = metric
        self.maximize = direction == "maximize"
        self.space_file = space_file
        self.best: float | None = None
        self.validations = 0
        self.pruned_at: int | None = None  # the validation after which the pruner stopped the trial
        self._hparams_logged = False

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.metric)
        if value is None:
            logged = ", ".join(sorted(k for k in trainer.callback_metrics if not k.startswith("train/"))) or "none"
            raise InputError(f"{self.space_file}: metric: {self.metric} is not logged by the validation "
                             f"(it logs {logged})")
        value = float(value)
        step, self.validations = self.validations, self.validations + 1
        improved = not math.isnan(value) and (
            self.best is None or (value > self.best if self.maximize else value < self.best))
        if improved:
            self.best = value
        prune = False
        if trainer.is_global_zero:
            self._log(trainer, improved)
            if self.trial is not None:
                self.trial.report(value, step)
                prune = self.trial.should_prune()
        if trainer.world_size > 1:
            prune = trainer.strategy.broadcast(prune)
        if prune:
            trainer.should_stop = True
            self.pruned_at = step

    def _log(self, trainer: Trainer, improved: bool) -> None:
        tensorboard = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if tensorboard is None or self.best is None:
            return
        if not self._hparams_logged:
            tensorboard.log_hyperparams({**self.values, "trial": self.number}, {OBJECTIVE: self.best},
                                        step=trainer.global_step)
            self._hparams_logged = True
        elif improved:
            tensorboard.log_metrics({OBJECTIVE: self.best}, step=trainer.global_step)

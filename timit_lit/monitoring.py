"""What a run shows in TensorBoard beyond the loss and accuracy curves.

The CLI adds all of these to every run (see ``cli.py``), each tunable from the config:

- ``lr_monitor``: the learning rate, once per epoch (Lightning's ``LearningRateMonitor``);
- ``throughput``: training frames per second, once per epoch;
- ``figures``: per validation epoch, the confusion matrix and the accuracy of each phone,
  with the phone names on the axes, drawn with torchmetrics' plotting;
- the HParams tab: the run's whole config with its best ``val/acc`` (:class:`RunConfig`,
  which also writes ``config.yaml`` into the run folder).

All of them work from host-side counters or once per epoch: nothing here makes the
device synchronise on a training step.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import yaml
from matplotlib.figure import Figure
from pytorch_lightning import LightningModule, Trainer
from pytorch_lightning.callbacks import Callback, LearningRateMonitor
from pytorch_lightning.cli import SaveConfigCallback
from pytorch_lightning.loggers import TensorBoardLogger
from torchmetrics.utilities.plot import plot_single_or_multi_val

from timit_lit.phones import PHONES

BEST_METRIC = "hp/best_val_acc"


def _tensorboard(trainer: Trainer) -> TensorBoardLogger | None:
    return next((logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)), None)


def _class_names(num_classes: int) -> list[str]:
    return list(PHONES) if num_classes == len(PHONES) else [str(k) for k in range(num_classes)]


class EpochLearningRate(LearningRateMonitor):
    """Lightning's ``LearningRateMonitor`` (``logging_interval`` defaults to ``epoch`` in the
    CLI), except that a run without a logger skips it instead of failing: the CLI adds it to
    every run, ``--trainer.logger false`` included."""

    def on_train_start(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_start(trainer, *args, **kwargs)

    def on_train_batch_start(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_batch_start(trainer, *args, **kwargs)

    def on_train_epoch_start(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_epoch_start(trainer, *args, **kwargs)


class EpochThroughput(Callback):
    """Logs ``train/frames_per_s``: the rows trained in an epoch (all processes) divided by
    the wall time from the epoch's start to the end of its last training batch (validation
    not counted). It counts rows from the batch's shape and reads the clock on the host, so
    it never waits for the device (on a GPU the last few queued steps may still be running
    when the clock stops: a negligible error over an epoch). Under DDP each process times
    its own epoch, and the mean of their figures is logged.

    Args:
        name: the scalar's tag in TensorBoard.
    """

    def __init__(self, name: str = "train/frames_per_s"):
        self.name = name
        self._start = self._end = 0.0
        self._rows = 0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start, self._end, self._rows = time.perf_counter(), 0.0, 0

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        self._rows += _frames(batch)
        self._end = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._rows and self._end > self._start:
            rate = self._rows * trainer.world_size / (self._end - self._start)
            # sync_dist: the mean of the processes' estimates (each times its own epoch), once per epoch.
            pl_module.log(self.name, rate, on_epoch=True, on_step=False, sync_dist=True)


def _frames(batch) -> int:
    """Real frames in a training batch: one (features, labels) batch, a list of them
    (data.steps_per_call > 1), or utterances (features, labels, lengths) counted by length."""
    if isinstance(batch, list):
        return sum(_frames(b) for b in batch)
    if len(batch) == 3:
        return int(batch[2].sum())  # a sequence model's step synchronises anyway (masking its real frames)
    return batch[1].numel()


def confusion_figure(confusion, counts: torch.Tensor, names: list[str], title: str) -> Figure:
    """The confusion matrix with each true class's row normalised to 1 (so the diagonal is
    the per-class accuracy), drawn by ``MulticlassConfusionMatrix.plot``."""
    rates = counts.double() / counts.sum(dim=1, keepdim=True).clamp(min=1)
    fig = Figure(figsize=(11, 10), layout="constrained")  # no pyplot: Agg, no global backend state
    ax = fig.add_subplot()
    confusion.plot(val=rates, ax=ax, add_text=False, labels=names, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=8)
    ax.set_yticks(range(len(names)), names, rotation=0, fontsize=8)
    fig.colorbar(ax.images[0], ax=ax, shrink=0.8, label="fraction of the true phone's frames")
    ax.set_title(title)
    return fig


def per_class_figure(counts: torch.Tensor, names: list[str], title: str) -> Figure:
    """The accuracy (recall) of each class, diagonal / row sum of the confusion counts, drawn
    by torchmetrics' ``plot_single_or_multi_val``, with the class names along the x axis."""
    totals = counts.sum(dim=1)
    recall = counts.diagonal().double() / totals.clamp(min=1)
    overall = counts.diagonal().sum().item() / max(totals.sum().item(), 1)
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    ax = fig.add_subplot()
    plot_single_or_multi_val(recall, ax=ax, lower_bound=0.0, upper_bound=1.0, name="accuracy")
    if ax.get_legend() is not None:
        ax.get_legend().remove()  # one entry per class: the x axis names them instead
    for marker in ax.get_lines():
        marker.set_color("tab:blue")
    ax.get_xaxis().set_visible(True)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=9)
    mean = ax.axhline(overall, color="tab:orange", linewidth=1)
    ax.legend([mean], [f"all frames: {overall:.3f}"], loc="lower right")
    ax.set_title(title)
    return fig


class ValidationFigures(Callback):
    """After each validation epoch, logs two images to TensorBoard: ``val/confusion`` (the
    row-normalised confusion matrix) and ``val/phone_acc`` (the accuracy of each phone).

    They come from the model's ``val_confusion`` metric, whose counts add up on the device
    during validation; reading them (summed over all processes) and drawing the figures
    takes about a second per epoch on 2 CPU cores. Skipped during the sanity check, and
    when the run logs to no TensorBoard.

    Args:
        enabled: log the figures; ``false`` skips them.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        confusion = getattr(pl_module, "val_confusion", None)
        tensorboard = _tensorboard(trainer)
        if not self.enabled or trainer.sanity_checking or confusion is None or tensorboard is None:
            return
        counts = confusion.compute().cpu()  # on every process: it sums the counts of all
        if not trainer.is_global_zero or counts.sum() == 0:
            return
        names = _class_names(len(counts))
        epoch = f"epoch {trainer.current_epoch}, step {trainer.global_step}"
        figures = {
            "val/confusion": confusion_figure(confusion, counts, names, f"validation confusion, rows normalised ({epoch})"),
            "val/phone_acc": per_class_figure(counts, names, f"validation accuracy per phone ({epoch})"),
        }
        for tag, figure in figures.items():
            tensorboard.experiment.add_figure(tag, figure, global_step=trainer.global_step, close=True)


class RunConfig(SaveConfigCallback):
    """LightningCLI's ``SaveConfigCallback`` (writes the run's ``config.yaml`` into its folder),
    which for ``fit`` also puts that same config in TensorBoard's HParams tab, with the run's
    best ``val/acc`` as the metric ``hp/best_val_acc``, logged again whenever it improves.

    The HParams entry is written at the first validation, so a run without validation has
    none. The best value is kept in checkpoints, so a resumed run goes on from it.
    ``default_hp_metric`` must be off on the TensorBoardLogger (it is on the CLI's default
    logger), or Lightning adds a second, metric-less entry for the run.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.best: float | None = None
        self._stage: str | None = None
        self._hparams_logged = False

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "predict":  # predict has no logger (timit_lit.cli), so no run folder to save into
            super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._stage = stage  # called on rank 0 only, as the rest of this callback's work

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        tensorboard = _tensorboard(trainer)
        value = trainer.callback_metrics.get("val/acc")
        if self._stage != "fit" or trainer.sanity_checking or tensorboard is None or value is None:
            return
        value = float(value)
        improved = self.best is None or value > self.best
        if improved:
            self.best = value
        if not self._hparams_logged:
            config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))  # = config.yaml
            model = config.get("model")
            if isinstance(model, dict) and "init_args" in model:  # model/lr rather than model/init_args/lr
                config["model"] = {"class_path": model.get("class_path"), **model["init_args"]}
            tensorboard.log_hyperparams(config, {BEST_METRIC: self.best}, step=trainer.global_step)
            self._hparams_logged = True
        elif improved:
            tensorboard.log_metrics({BEST_METRIC: self.best}, step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"best_val_acc": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict.get("best_val_acc")

"""What a run shows in TensorBoard beyond the loss and accuracy curves.

The CLI adds all of these to every run (see ``cli.py``), each tunable from the config:

- ``lr_monitor``: the learning rate, once per epoch (Lightning's ``LearningRateMonitor``);
- ``throughput``: training frames per second, once per epoch;
- ``figures``: per validation epoch, the confusion matrix and the accuracy of each phone,
  with the phone names on the axes, drawn with torchmetrics' plotting, and a few
  validation utterances: their features over time above the reference phones and the
  predicted ones (``val/segments``);
- the HParams tab: the run's whole config with its best ``val/acc`` (:class:`RunConfig`,
  which also writes ``config.yaml`` into the run folder).

All of them work from host-side counters or once per epoch: nothing here makes the
device synchronise on a training step. (The phone error rate and boundary accuracies are
logged by :mod:`timit_lit.callbacks.phone_errors`.)
"""

from __future__ import annotations

import time
from typing import Any, Optional

import numpy as np
import torch
import yaml
from matplotlib import colormaps
from matplotlib.figure import Figure
from pytorch_lightning import LightningModule, Trainer
from pytorch_lightning.callbacks import Callback, LearningRateMonitor
from pytorch_lightning.cli import SaveConfigCallback
from pytorch_lightning.loggers import TensorBoardLogger
from torchmetrics.utilities.plot import plot_single_or_multi_val

from timit_lit.scoring import dataset_starts, phone_error_rate
from timit_lit.phones import PHONES
from timit_lit.data.files import FRAME_DIMS
from timit_lit.data.utterances import segment_offsets

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
    not counted). It counts rows from the batch's shape (utterance batches: their lengths,
    summed on the device and read once per epoch) and reads the clock on the host, so a
    step never waits for the device (on a GPU the last few queued steps may still be running
    when the clock stops: a negligible error over an epoch). Under DDP each process times
    its own epoch, and the mean of their figures is logged.

    Args:
        name: the scalar's tag in TensorBoard.
    """

    batch_hooks_per_call = True  # a call of several steps counts its rows alike (timit_lit.models.train_steps)

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
        rows = int(self._rows)  # the epoch's one read of a count kept on the device
        if rows and self._end > self._start:
            rate = rows * trainer.world_size / (self._end - self._start)
            # sync_dist: the mean of the processes' estimates (each times its own epoch), once per epoch.
            pl_module.log(self.name, rate, on_epoch=True, on_step=False, sync_dist=True)


def _frames(batch):
    """Real frames in a training batch: one (features, labels) batch, a list of them
    (model.steps_per_call > 1), or utterances (features, labels, lengths[, teacher's
    posteriors]) counted by length,
    on the device (a tensor, read once per epoch: no step waits for it)."""
    if isinstance(batch, list):
        return sum(_frames(b) for b in batch)
    if len(batch) >= 3:
        return batch[2].sum()
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


def _phone_colours(num_classes: int) -> list:
    """One colour per class, the same in every strip (tab20 and tab20b: 40 distinct colours)."""
    colours = [*colormaps["tab20"].colors, *colormaps["tab20b"].colors]
    return [colours[k % len(colours)] for k in range(num_classes)]


def _phone_strip(ax, classes: np.ndarray, names: list[str], colours: list, label: str) -> None:
    """``classes`` (one per frame) as a strip of phone segments, each named where it is wide enough."""
    first = np.flatnonzero(np.r_[True, classes[1:] != classes[:-1]])
    widths = np.diff(np.r_[first, len(classes)])
    phones = classes[first]
    ax.broken_barh(list(zip(first - 0.5, widths)), (0, 1), facecolors=[colours[c] for c in phones],
                   edgecolor="white", linewidth=0.6)
    min_width = len(classes) / 70  # frames a 3-letter name needs at this figure's width
    for start, width, phone in zip(first, widths, phones):
        if width >= min_width:
            dark = sum(colours[phone][:3]) < 1.5
            ax.text(start - 0.5 + width / 2, 0.5, names[phone], ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")
    ax.set_ylim(0, 1)
    ax.set_yticks([0.5], [label])
    ax.tick_params(axis="y", length=0)


def segments_figure(examples: list[dict], names: list[str], title: str) -> Figure:
    """For each example utterance (``frames``: frames x features, ``reference`` and
    ``predicted``: a class per frame, ``title``): its features as an image over time, each
    dimension standardised over the utterance, the reference's phone boundaries drawn on
    it, above the reference and the predicted phone segments (one colour per phone) and a
    strip marking the frames predicted wrong."""
    colours = _phone_colours(len(names))
    fig = Figure(figsize=(15, 3.3 * len(examples)), layout="constrained")
    fig.suptitle(title)
    for subfig, example in zip(np.atleast_1d(fig.subfigures(len(examples), 1, hspace=0.04)), examples):
        frames, reference, predicted = example["frames"], example["reference"], example["predicted"]
        ax_features, ax_reference, ax_predicted, ax_wrong = subfig.subplots(
            4, 1, sharex=True, gridspec_kw={"height_ratios": [3, 0.55, 0.55, 0.2], "hspace": 0.02})
        scaled = (frames - frames.mean(0)) / frames.std(0).clip(min=1e-6)
        ax_features.imshow(scaled.T.clip(-3, 3), aspect="auto", origin="lower", cmap="magma", interpolation="nearest",
                           extent=(-0.5, len(frames) - 0.5, -0.5, frames.shape[1] - 0.5))
        for edge in np.flatnonzero(reference[1:] != reference[:-1]):  # the reference's phone boundaries
            ax_features.axvline(edge + 0.5, color="white", linewidth=0.6, alpha=0.6)
        ax_features.set_ylabel("feature")
        ax_features.set_title(example["title"], fontsize=10, loc="left")
        _phone_strip(ax_reference, reference, names, colours, "reference")
        _phone_strip(ax_predicted, predicted, names, colours, "predicted")
        wrong = (predicted != reference).astype(float)[None, :]
        ax_wrong.imshow(wrong, aspect="auto", cmap="Reds", vmin=0, vmax=1.25, interpolation="nearest",
                        extent=(-0.5, len(frames) - 0.5, 0, 1))
        ax_wrong.set_yticks([0.5], ["wrong"])
        ax_wrong.tick_params(axis="y", length=0)
        ax_wrong.set_xlabel("frame (10 ms)")
    return fig


def centre_frame_features(rows: np.ndarray) -> np.ndarray:
    """Each row's centre frame (the labelled one) where rows are spliced frames of
    ``FRAME_DIMS`` features, else the rows as they are."""
    n_frames, extra = divmod(rows.shape[1], FRAME_DIMS)
    if extra or n_frames % 2 == 0:
        return rows
    return rows[:, n_frames // 2 * FRAME_DIMS : (n_frames // 2 + 1) * FRAME_DIMS]


def example_segments(dataset, count: int, datamodule=None) -> list[tuple[int, int, int]]:
    """``(segment, first, stop)``: the first ``count`` segments of the split's rows that are
    whole utterances (then others, if there are fewer), as positions in ``dataset.rows``."""
    rows = dataset.rows.numpy()
    starts = dataset_starts(dataset, datamodule)
    if starts is None or not len(rows):
        return []
    offsets = segment_offsets(rows, starts)
    whole = np.isin(rows[offsets[:-1]], starts) & np.isin(rows[offsets[1:] - 1] + 1, starts)
    chosen = np.sort(np.r_[np.flatnonzero(whole), np.flatnonzero(~whole)][:count])
    return [(int(k), int(offsets[k]), int(offsets[k + 1])) for k in chosen]


class ValidationFigures(Callback):
    """After each validation epoch, logs three images to TensorBoard: ``val/confusion`` (the
    row-normalised confusion matrix), ``val/phone_acc`` (the accuracy of each phone) and
    ``val/segments`` (:func:`segments_figure` of the first ``utterances`` whole utterances
    of the validation split, the same ones every epoch).

    The first two come from the model's ``val_confusion`` metric, whose counts add up on
    the device during validation; reading them (summed over all processes) and drawing the
    figures takes about a second per epoch on 2 CPU cores. The segments are predicted
    again, by one forward pass per utterance on rank 0. Skipped during the sanity check,
    and when the run logs to no TensorBoard.

    Args:
        enabled: log the figures; ``false`` skips them.
        utterances: how many utterances ``val/segments`` shows (0: no such figure).
    """

    def __init__(self, enabled: bool = True, utterances: int = 3):
        self.enabled = enabled
        self.utterances = utterances
        self._examples: Optional[tuple[object, list]] = None  # (dataset, example_segments of it)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        confusion = getattr(pl_module, "val_confusion", None)
        tensorboard = _tensorboard(trainer)
        if not self.enabled or trainer.sanity_checking or tensorboard is None:
            return
        counts = confusion.compute().cpu() if confusion is not None else None  # on every process: it sums all
        if not trainer.is_global_zero:
            return
        epoch = f"epoch {trainer.current_epoch}, step {trainer.global_step}"
        figures = {}
        if counts is not None and counts.sum() > 0:
            names = _class_names(len(counts))
            figures["val/confusion"] = confusion_figure(confusion, counts, names,
                                                        f"validation confusion, rows normalised ({epoch})")
            figures["val/phone_acc"] = per_class_figure(counts, names, f"validation accuracy per phone ({epoch})")
        examples = self._predict_examples(trainer, pl_module) if self.utterances > 0 else []
        if examples:
            names = _class_names(getattr(pl_module.hparams, "num_classes", len(PHONES)))
            figures["val/segments"] = segments_figure(examples, names, f"validation utterances ({epoch})")
        for tag, figure in figures.items():
            tensorboard.experiment.add_figure(tag, figure, global_step=trainer.global_step, close=True)

    def _predict_examples(self, trainer: Trainer, pl_module: LightningModule) -> list[dict]:
        """The example utterances' centre frames, labels and predicted classes."""
        dataset = trainer.val_dataloaders.dataset
        if self._examples is None or self._examples[0] is not dataset:
            self._examples = (dataset, example_segments(dataset, self.utterances, getattr(trainer, "datamodule", None)))
        examples = []
        for segment, first, stop in self._examples[1]:
            rows = dataset.rows[first:stop].numpy()
            features = torch.from_numpy(np.asarray(dataset.features[rows]))
            labels = torch.from_numpy(dataset.labels[rows])
            if hasattr(dataset, "offsets"):  # utterance batches: (utterances x frames x features, labels, lengths)
                batch = (features[None], labels[None], torch.tensor([len(rows)]))
            else:
                batch = (features, labels)
            precision = trainer.precision_plugin
            with torch.no_grad(), precision.forward_context():
                batch = precision.convert_input(tuple(t.to(pl_module.device) for t in batch))
                predicted = pl_module.frame_logits(batch)[0].argmax(dim=1).cpu().numpy()
            reference = labels.numpy()
            if (reference < 0).any():  # frames that are input only (split labels): no segment to show
                continue
            offsets = np.array([0, len(rows)])
            examples.append({
                "frames": centre_frame_features(features.numpy()),
                "reference": reference,
                "predicted": predicted,
                "title": f"validation segment {segment}: rows {rows[0]}-{rows[-1]} of the file ({len(rows)} frames); "
                         f"frame accuracy {np.mean(predicted == reference):.3f}, "
                         f"PER {phone_error_rate(predicted, reference, offsets):.3f}",
            })
        return examples


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

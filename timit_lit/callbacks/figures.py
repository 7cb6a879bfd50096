"""Validation figures in TensorBoard: the confusion matrix, each phone's accuracy and a few
utterances as predicted (drawn by :mod:`timit_lit.drawing`)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from pytorch_lightning import LightningModule, Trainer
from pytorch_lightning.callbacks import Callback

from timit_lit.callbacks.monitoring import tensorboard_logger
from timit_lit.data.files import FRAME_DIMS
from timit_lit.data.row_space import known_starts
from timit_lit.drawing import class_names, confusion_figure, per_class_figure, segments_figure
from timit_lit.phones import PHONES
from timit_lit.scoring import phone_error_rate


def centre_frame_features(rows: np.ndarray) -> np.ndarray:
    """Each row's centre frame (the labelled one) where rows are spliced frames of
    ``FRAME_DIMS`` features, else the rows as they are."""
    n_frames, extra = divmod(rows.shape[1], FRAME_DIMS)
    if extra or n_frames % 2 == 0:
        return rows
    return rows[:, n_frames // 2 * FRAME_DIMS : (n_frames // 2 + 1) * FRAME_DIMS]


def example_segments(dataset, count: int) -> list[tuple[int, int, int]]:
    """``(segment, first, stop)``: the first ``count`` segments of the split's rows that are
    whole utterances (then others, if there are fewer), as positions in ``dataset.rows``."""
    rows = dataset.rows.numpy()
    starts = known_starts(dataset)
    if starts is None or not len(rows):
        return []
    offsets = dataset.row_space.segments(rows)
    whole = np.isin(rows[offsets[:-1]], starts) & np.isin(rows[offsets[1:] - 1] + 1, starts)
    chosen = np.sort(np.r_[np.flatnonzero(whole), np.flatnonzero(~whole)][:count])
    return [(int(k), int(offsets[k]), int(offsets[k + 1])) for k in chosen]


class ValidationFigures(Callback):
    """After each validation epoch, logs three images to TensorBoard: ``val/confusion`` (the
    row-normalised confusion matrix), ``val/phone_acc`` (the accuracy of each phone) and
    ``val/segments`` (:func:`~timit_lit.drawing.segments_figure` of the first ``utterances`` whole utterances
    of the validation split, the same ones every epoch).

    The first two come from the model's ``val_confusion`` metric, whose counts add up on
    the device during validation, read once per epoch (summed over all processes). The segments are predicted
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
        tensorboard = tensorboard_logger(trainer)
        if not self.enabled or trainer.sanity_checking or tensorboard is None:
            return
        counts = confusion.compute().cpu() if confusion is not None else None  # on every process: it sums all
        if not trainer.is_global_zero:
            return
        epoch = f"epoch {trainer.current_epoch}, step {trainer.global_step}"
        figures = {}
        if counts is not None and counts.sum() > 0:
            names = class_names(len(counts))
            figures["val/confusion"] = confusion_figure(confusion, counts, names,
                                                        f"validation confusion, rows normalised ({epoch})")
            figures["val/phone_acc"] = per_class_figure(counts, names, f"validation accuracy per phone ({epoch})")
        examples = self._predict_examples(trainer, pl_module) if self.utterances > 0 else []
        if examples:
            names = class_names(getattr(pl_module.hparams, "num_classes", len(PHONES)))
            figures["val/segments"] = segments_figure(examples, names, f"validation utterances ({epoch})")
        for tag, figure in figures.items():
            tensorboard.experiment.add_figure(tag, figure, global_step=trainer.global_step, close=True)

    def _predict_examples(self, trainer: Trainer, pl_module: LightningModule) -> list[dict]:
        """The example utterances' centre frames, labels and predicted classes."""
        dataset = trainer.val_dataloaders.dataset
        if self._examples is None or self._examples[0] is not dataset:
            self._examples = (dataset, example_segments(dataset, self.utterances))
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

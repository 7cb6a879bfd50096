"""Viterbi decoding (:mod:`timit_lit.decoding`) scored in validate and test, and written by predict."""

from __future__ import annotations

from typing import Optional

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_info

from timit_lit.callbacks.outputs import EvaluationOutputs
from timit_lit.data.files import TRAIN_FEATURES, TRAIN_LABELS
from timit_lit.data.row_space import RowSpace
from timit_lit.decoding import PhoneStatistics, clamp_known, frame_accuracy, viterbi_decode
from timit_lit.errors import InputError
from timit_lit.scoring import phone_error_rate


class ViterbiEvaluation(pl.Callback):
    """Scores Viterbi decoding in ``validate``, ``test`` and fit's validation, logged as
    ``val/acc_viterbi`` or ``test/acc_viterbi`` next to the framewise ``*/acc``, and its phone
    error rate as ``*/per_viterbi`` (:mod:`timit_lit.scoring`); with it enabled, ``predict`` writes
    the decoded classes (the CLI gives the enabled decoder to the CSV writer).

    It decodes with the model's phone statistics (:attr:`PhoneModel.phone_statistics
    <timit_lit.models.PhoneModel.phone_statistics>`: counted by its fit, read from its
    checkpoint); a checkpoint from before they were saved falls back to counting the training
    file's labels, all rows. The split's log posteriors are collected in row order
    (:class:`~timit_lit.callbacks.outputs.EvaluationOutputs`), cut into the utterances of the
    dataset's row space and decoded; accuracy counts the frames the split scores (a frame
    without a label is input only). One process only.

    Args:
        enabled: decode (off by default).
        transition_weight: weight of the log transition probabilities (0: framewise).
        prior_weight: weight of the log priors divided out of the posteriors.
        known_labels: decode with the labels that were given for training taken as
            certain where they share an utterance with the decoded rows (the row space's
            ``given_labels``: in MLE-bench's split the test rows sit between labelled
            training rows; in validation with ``split: labels``, the rows that train): those
            frames keep their label and the others are chosen around them.
    """

    accuracy_name = "acc_viterbi"  # the name under which validate and test log the decoded accuracy
    option = "decoding"  # the CLI's name for it

    def __init__(self, enabled: bool = False, transition_weight: float = 1.0, prior_weight: float = 1.0,
                 known_labels: bool = False):
        self.enabled, self.transition_weight, self.prior_weight = enabled, transition_weight, prior_weight
        self.known_labels = known_labels
        # The epoch's predictions, shared with the other evaluations (given by the CLI; else its own).
        self.outputs: Optional[EvaluationOutputs] = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.enabled:
            self.outputs = EvaluationOutputs.attach(trainer, self.outputs, log_posteriors=True)

    def _require_utterances(self, dataset) -> None:
        space = getattr(dataset, "row_space", None)
        if self.enabled and space is not None:
            space.require_utterances(f"{self.option}.enabled true")

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._require_utterances(trainer.val_dataloaders.dataset if trainer.val_dataloaders else None)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._require_utterances(trainer.test_dataloaders.dataset)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._require_utterances(trainer.predict_dataloaders.dataset)

    def _active(self, trainer: pl.Trainer) -> bool:
        return self.enabled and trainer.state.fn in ("fit", "validate", "test") and not trainer.sanity_checking

    def _score(self, trainer, pl_module, dataset, stage: str) -> None:
        if not self._active(trainer):
            return
        if trainer.world_size > 1:
            raise InputError("decoding.enabled runs on one process")
        rows = self.outputs.rows(dataset)  # (with limit_{val,test}_batches, the first rows only)
        stats = self.statistics(trainer, pl_module)
        decoded = self.decode(self.outputs.log_posteriors(), rows, dataset.row_space, stats)
        labels = dataset.labels[rows]
        scored = labels >= 0
        if scored.all():
            scores = self.scores(decoded, labels, dataset.row_space.segments(rows))
        else:  # held-out labels scattered inside utterances: the accuracy of those frames, no phone error rate
            scores = {self.accuracy_name: frame_accuracy(decoded[torch.from_numpy(scored)], labels[scored])}
        for name, value in scores.items():
            pl_module.log(f"{stage}/{name}", value)

    def scores(self, decoded: torch.Tensor, labels: np.ndarray, offsets: np.ndarray) -> dict[str, float]:
        """What ``validate`` and ``test`` log of the decoded classes, by name."""
        return {"acc_viterbi": frame_accuracy(decoded, labels), "per_viterbi": phone_error_rate(decoded, labels, offsets)}

    def decode_segments(self, log_posteriors: torch.Tensor, offsets: np.ndarray, stats: PhoneStatistics) -> torch.Tensor:
        """The decoded classes of frames laid out by ``offsets``."""
        return viterbi_decode(log_posteriors, offsets, stats, self.transition_weight, self.prior_weight)

    def description(self) -> str:
        """The decoder and its settings, in words, for ``predict``'s log."""
        known = " with the training rows' given labels taken as known" if self.known_labels else ""
        return f"Viterbi (transition weight {self.transition_weight}){known}"

    def statistics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> PhoneStatistics:
        """The model's phone statistics; for a model without them (a checkpoint from before
        they were saved), those of the training file's labels, all rows, as decoding took then."""
        stats = getattr(pl_module, "phone_statistics", None)
        if stats is not None:
            return stats
        dm = trainer.datamodule
        where = trainer.ckpt_path or "the model (no --ckpt_path)"
        rank_zero_info(f"timit_lit: no phone statistics in {where} (older checkpoints lack them): counting them from "
                       f"{dm.data_dir / TRAIN_LABELS}, all rows, validation included")
        labels = dm.training_labels()
        labels, offsets = dm.file_row_space(TRAIN_FEATURES).in_utterances(np.arange(len(labels)), labels)
        return PhoneStatistics.estimate(labels, offsets, dm.num_classes)

    def decode(self, log_posteriors: torch.Tensor, rows: np.ndarray, row_space: RowSpace,
               stats: PhoneStatistics) -> torch.Tensor:
        """The decoded classes of ``rows`` (sorted row ids of ``row_space``) from their log
        posteriors, with the labels given for training taken as certain if ``known_labels``;
        also what ``predict`` writes (timit_lit.callbacks.prediction)."""
        known = row_space.given_labels if self.known_labels else None
        if known is not None:
            log_posteriors = clamp_known(log_posteriors, known[rows])
        return self.decode_segments(log_posteriors, row_space.segments(rows), stats)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._score(trainer, pl_module, trainer.val_dataloaders.dataset if self._active(trainer) else None, "val")

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._score(trainer, pl_module, trainer.test_dataloaders.dataset if self._active(trainer) else None, "test")

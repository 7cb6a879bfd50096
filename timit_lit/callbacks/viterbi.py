"""Viterbi decoding (:mod:`timit_lit.decoding`) scored in validate and test, and its statistics counted in fit."""

from __future__ import annotations

from typing import Optional

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_info

from timit_lit.callbacks.outputs import EvaluationOutputs
from timit_lit.data.files import TRAIN_FEATURES, TRAIN_LABELS
from timit_lit.data.utterances import segment_offsets
from timit_lit.decoding import STATISTICS_KEY, PhoneStatistics, clamp_known, frame_accuracy, viterbi_decode
from timit_lit.errors import InputError
from timit_lit.scoring import phone_error_rate


class ViterbiEvaluation(pl.Callback):
    """Scores Viterbi decoding in ``validate``, ``test`` and fit's validation, logged as
    ``val/acc_viterbi`` or ``test/acc_viterbi`` next to the framewise ``*/acc``, and its phone
    error rate as ``*/per_viterbi`` (:mod:`timit_lit.scoring`); with it enabled, ``predict`` writes the decoded classes.

    The phone statistics belong to the model, like its weights. Every ``fit`` counts them
    from the training split's rows alone, cut into utterances and at the split's cuts (so
    the validation labels never score themselves), whether decoding is enabled or not, and
    the model saves them into each checkpoint (:data:`STATISTICS_KEY`): a checkpoint
    decodes without the training files. A checkpoint from before they were saved falls
    back to counting the training file's labels, all rows. The split's log posteriors are
    collected in row order (:class:`~timit_lit.callbacks.outputs.EvaluationOutputs`), cut into
    utterances and decoded; accuracy counts the frames the split scores (a frame without a
    label is input only). One process only.

    Args:
        enabled: decode (off by default).
        transition_weight: weight of the log transition probabilities (0: framewise).
        prior_weight: weight of the log priors divided out of the posteriors.
        known_labels: decode with the labels that were given for training taken as
            certain where they share an utterance with the decoded rows (the data module's
            ``known_labels``: in MLE-bench's split the test rows sit between labelled
            training rows; in validation with ``split: labels``, the rows that train): those
            frames keep their label and the others are chosen around them.
    """

    accuracy_name = "acc_viterbi"  # the name under which validate and test log the decoded accuracy

    def __init__(self, enabled: bool = False, transition_weight: float = 1.0, prior_weight: float = 1.0,
                 known_labels: bool = False):
        self.enabled, self.transition_weight, self.prior_weight = enabled, transition_weight, prior_weight
        self.known_labels = known_labels
        self._outputs: EvaluationOutputs | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        if self.enabled and hasattr(datamodule, "require_utterances"):
            datamodule.require_utterances("decoding.enabled true")
        # Every fit, decoding enabled or not, so that any checkpoint can be decoded later.
        if stage == "fit" and hasattr(datamodule, "labelled_segments"):
            pl_module.phone_statistics = training_statistics(datamodule)
        if self.enabled:
            self._outputs = EvaluationOutputs.attach(trainer, log_posteriors=True)

    def _active(self, trainer: pl.Trainer) -> bool:
        return self.enabled and trainer.state.fn in ("fit", "validate", "test") and not trainer.sanity_checking

    def _score(self, trainer, pl_module, split: str, stage: str) -> None:
        if not self._active(trainer):
            return
        if trainer.world_size > 1:
            raise InputError("decoding.enabled runs on one process")
        datamodule = trainer.datamodule
        dataset = datamodule.dataset(split)
        rows = self._outputs.rows(dataset)  # (with limit_{val,test}_batches, the first rows only)
        stats = self.statistics(trainer, pl_module)
        decoded = self.decode(datamodule, self._outputs.log_posteriors(), rows, dataset.file, stats, split)
        labels = dataset.labels[rows]
        scored = labels >= 0
        if scored.all():
            scores = self.scores(decoded, labels, self.offsets(datamodule, rows, dataset.file))
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
        return f"Viterbi (transition weight {self.transition_weight})"

    def statistics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> PhoneStatistics:
        """The model's phone statistics (counted by its fit, or read from its checkpoint); for
        a model without them, those of the training file's labels, all rows, as before."""
        stats = getattr(pl_module, "phone_statistics", None)
        if stats is not None:
            return stats
        dm = trainer.datamodule
        where = trainer.ckpt_path or "the model (no --ckpt_path)"
        rank_zero_info(f"timit_lit: no phone statistics in {where} (older checkpoints lack them): counting them from "
                       f"{dm.data_dir / TRAIN_LABELS}, all rows, validation included")
        return PhoneStatistics.estimate(dm.training_labels(), dm.utterance_starts(TRAIN_FEATURES), dm.num_classes)

    def decode(self, datamodule, log_posteriors: torch.Tensor, rows: np.ndarray, file: str,
               stats: PhoneStatistics, split: Optional[str] = None) -> torch.Tensor:
        """The decoded classes of ``rows`` (sorted row ids of the row space ``file``, served
        to ``split``) from their log posteriors, with the known labels taken as certain if
        ``known_labels``; also used by ``predict`` (timit_lit.callbacks.prediction)."""
        known = datamodule.known_labels(split) if self.known_labels and split else None
        if known is not None:
            log_posteriors = clamp_known(log_posteriors, known[rows])
        return self.decode_segments(log_posteriors, self.offsets(datamodule, rows, file), stats)

    @staticmethod
    def offsets(datamodule, rows: np.ndarray, file: str) -> np.ndarray:
        """The segments of ``rows`` (sorted row ids of the row space ``file``): its utterances, cut where rows are missing."""
        return segment_offsets(rows, datamodule.utterance_starts(file))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._score(trainer, pl_module, "val", "val")

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._score(trainer, pl_module, "test", "test")


def training_statistics(datamodule) -> PhoneStatistics:
    """The statistics of the labelled rows that train, segmented by utterance, at the
    split's cuts and at unlabelled rows (``datamodule.labelled_segments("train")``), so no
    transition joins two utterances or the two sides of a cut or a gap (its speed:
    docs/sequence-models.md)."""
    labels, offsets = datamodule.labelled_segments("train")
    return PhoneStatistics.estimate(labels, offsets, datamodule.num_classes)

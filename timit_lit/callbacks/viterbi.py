"""Viterbi decoding (:mod:`timit_lit.decoding`) scored in validate and test, and its statistics counted in fit."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_info

from timit_lit.callbacks.outputs import EvaluationOutputs
from timit_lit.data.files import TEST_FEATURES, TRAIN_FEATURES, TRAIN_LABELS
from timit_lit.data.utterances import segment_offsets
from timit_lit.decoding import STATISTICS_KEY, PhoneStatistics, frame_accuracy, viterbi_decode
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
    utterances and decoded. One process only.

    Args:
        enabled: decode (off by default).
        transition_weight: weight of the log transition probabilities (0: framewise).
        prior_weight: weight of the log priors divided out of the posteriors.
    """

    def __init__(self, enabled: bool = False, transition_weight: float = 1.0, prior_weight: float = 1.0):
        self.enabled, self.transition_weight, self.prior_weight = enabled, transition_weight, prior_weight
        self._outputs: EvaluationOutputs | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Every fit, decoding enabled or not, so that any checkpoint can be decoded later.
        datamodule = getattr(trainer, "datamodule", None)
        if stage == "fit" and "train" in getattr(datamodule, "_loaded", {}):
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
        dataset = trainer.datamodule._loaded[split]
        rows = self._outputs.rows(dataset)  # (with limit_{val,test}_batches, the first rows only)
        file = TRAIN_FEATURES if split == "val" else TEST_FEATURES
        stats = self.statistics(trainer, pl_module)
        offsets = self.offsets(trainer.datamodule, rows, file)
        decoded = self.decode_segments(self._outputs.log_posteriors(), offsets, stats)
        for name, value in self.scores(decoded, dataset.labels[rows], offsets).items():
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
        _, train_labels = dm._labelled(TRAIN_FEATURES, TRAIN_LABELS)
        return PhoneStatistics.estimate(train_labels, dm.utterance_starts(TRAIN_FEATURES), dm.num_classes)

    def decode(self, datamodule, log_posteriors: torch.Tensor, rows: np.ndarray, file: str,
               stats: PhoneStatistics) -> torch.Tensor:
        """The Viterbi classes of ``rows`` (sorted row ids of ``file`` in the data folder)
        from their log posteriors; also used by ``predict`` (timit_lit.callbacks.prediction)."""
        return self.decode_segments(log_posteriors, self.offsets(datamodule, rows, file), stats)

    @staticmethod
    def offsets(datamodule, rows: np.ndarray, file: str) -> np.ndarray:
        """The segments of ``rows`` (sorted row ids of ``file``): its utterances, cut where rows are missing."""
        return segment_offsets(rows, datamodule.utterance_starts(file))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._score(trainer, pl_module, "val", "val")

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._score(trainer, pl_module, "test", "test")


def training_statistics(datamodule) -> PhoneStatistics:
    """The statistics of the rows that train (``datamodule._loaded["train"]``), segmented by
    utterance and at the split's cuts, so no transition joins two utterances or the two
    sides of a cut (its speed: docs/sequence-models.md)."""
    train = datamodule._loaded["train"]
    rows = train.rows.numpy()
    starts = datamodule.utterance_starts(TRAIN_FEATURES)
    return PhoneStatistics.estimate(train.labels[rows], segment_offsets(rows, starts), datamodule.num_classes)

"""Phone error rate and boundary / inner-frame accuracy, logged in validate and test (see :mod:`timit_lit.scoring`)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.utilities.rank_zero import rank_zero_info, rank_zero_warn

from timit_lit.callbacks.outputs import EvaluationOutputs
from timit_lit.data.row_space import known_starts
from timit_lit.scoring import boundary_accuracy, phone_error_rate


class PhoneErrorEvaluation(pl.Callback):
    """Logs, in ``validate``, ``test`` and fit's validation, ``{val,test}/per`` (the phone
    error rate), ``acc_boundary``, ``acc_inner`` and ``errors_at_boundary`` (see the module
    docstring), beside the framewise ``acc``.

    Each step's predicted classes are kept on the device (no wait on a step), in the order
    the evaluation serves the split's rows (:class:`~timit_lit.callbacks.outputs.EvaluationOutputs`): row order, whether the batches hold rows or
    utterances, so the split's segments say where each utterance's frames are. Under DDP
    each process sees only some rows, neither whole utterances nor in order: it then warns
    once and logs none of these (run ``validate`` / ``test`` on one device for them).

    Args:
        enabled: compute and log them (on the host, once per epoch: the edit distances run
            in Python, the rest is a few array operations).
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.outputs: Optional[EvaluationOutputs] = None  # shared with the other evaluations (given by the CLI)
        self._segments: dict[str, tuple[object, Optional[np.ndarray]]] = {}  # split: (dataset, its offsets)
        self._warned = False
        self._warned_unscored = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.enabled and trainer.world_size > 1 and stage in ("fit", "validate", "test"):
            rank_zero_warn(f"phone_errors: the phone error rate and boundary accuracies need one process; "
                           f"this run has {trainer.world_size}, so none is logged (run validate or test on one device)")
        if self.enabled:
            self.outputs = EvaluationOutputs.attach(trainer, self.outputs)

    def _active(self, trainer: pl.Trainer) -> bool:
        return (self.enabled and trainer.world_size == 1 and trainer.state.fn in ("fit", "validate", "test")
                and not trainer.sanity_checking)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._score(trainer, pl_module, "val", trainer.val_dataloaders)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._score(trainer, pl_module, "test", trainer.test_dataloaders)

    def _score(self, trainer, pl_module, stage: str, loader) -> None:
        if not self._active(trainer) or not self.outputs.frames:
            return
        predictions = self.outputs.classes()
        dataset = loader.dataset
        offsets = self._offsets(stage, dataset)
        if offsets is None:
            return
        # With limit_{val,test}_batches the steps cover the first rows only: cut the segments there.
        n = len(predictions)
        offsets = np.append(offsets[offsets < n], n)
        labels = dataset.labels[self.outputs.rows(dataset)]
        if (labels < 0).any():  # some frames are input only (split labels, test rows inside utterances)
            if not self._warned_unscored:
                rank_zero_info(f"phone_errors: the {stage} split scores only some frames of its utterances: no phone "
                               f"error rate or boundary accuracy")
                self._warned_unscored = True
            return
        pl_module.log(f"{stage}/per", phone_error_rate(predictions, labels, offsets))
        for name, value in boundary_accuracy(predictions, labels, offsets).items():
            pl_module.log(f"{stage}/{name}", value)

    def _offsets(self, stage: str, dataset) -> Optional[np.ndarray]:
        """The segments of ``dataset``'s rows (its ``row_space``), worked out once per dataset."""
        if stage not in self._segments or self._segments[stage][0] is not dataset:
            offsets = None if known_starts(dataset) is None else dataset.row_space.segments(dataset.rows.numpy())
            if offsets is None and not self._warned:
                rank_zero_warn("phone_errors: the utterances of these rows cannot be told (rows not 11 spliced frames "
                               "of 39 features, or not in time order): no phone error rate or boundary accuracy")
                self._warned = True
            self._segments[stage] = (dataset, offsets)
        return self._segments[stage][1]

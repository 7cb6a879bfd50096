"""What a validation or test epoch predicted, collected once for the evaluations that score the whole epoch."""

from __future__ import annotations

from typing import Optional

import numpy as np
import pytorch_lightning as pl
import torch


class EvaluationOutputs(pl.Callback):
    """Keeps each validation / test step's predictions, in the order the evaluation serves
    the split's rows, for the evaluations that score the epoch as a whole: the phone errors
    (:class:`~timit_lit.callbacks.PhoneErrorEvaluation`, the classes) and Viterbi decoding
    (:class:`~timit_lit.callbacks.ViterbiEvaluation`, the log posteriors, kept only when it
    asks). They stay on the device (no wait on a step) until the epoch's end, and are freed
    when the evaluation ends. Not kept in the sanity check. The CLI gives one collector to
    all the evaluations (their ``outputs``) and to the Trainer; each attaches it with :meth:`attach`.
    """

    def __init__(self):
        self.log_posteriors_wanted = False
        self._classes: list[torch.Tensor] = []
        self._log_posteriors: list[torch.Tensor] = []

    @classmethod
    def attach(cls, trainer: pl.Trainer, outputs: Optional["EvaluationOutputs"],
               log_posteriors: bool = False) -> "EvaluationOutputs":
        """``outputs``, the collector an evaluation was given; or, for one used without the CLI,
        a collector of its own, added to the trainer's callbacks (call from a callback's
        ``setup``). ``log_posteriors``: keep those too."""
        if outputs is None:
            outputs = cls()
            trainer.callbacks.append(outputs)
        outputs.log_posteriors_wanted |= log_posteriors
        return outputs

    def _start(self, *args) -> None:
        self._classes, self._log_posteriors = [], []

    on_validation_epoch_start = on_test_epoch_start = on_validation_end = on_test_end = _start

    def _collect(self, trainer, pl_module, outputs, batch) -> None:
        if trainer.sanity_checking:
            return
        # The step's frame logits (PhoneModel returns them), or a forward pass for a model that does not.
        logits = (outputs if isinstance(outputs, torch.Tensor) else pl_module.frame_logits(batch)[0]).detach()
        self._classes.append(logits.argmax(dim=1))
        if self.log_posteriors_wanted:
            self._log_posteriors.append(logits.float().log_softmax(dim=1))  # float32 whatever the precision

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(trainer, pl_module, outputs, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(trainer, pl_module, outputs, batch)

    @property
    def frames(self) -> int:
        """Frames predicted so far this epoch."""
        return sum(len(c) for c in self._classes)

    def classes(self) -> np.ndarray:
        """The predicted class of every frame so far, in order."""
        return torch.cat(self._classes).cpu().numpy() if self._classes else np.zeros(0, dtype=np.int64)

    def log_posteriors(self) -> torch.Tensor:
        """The log posteriors of every frame so far, in order, on the CPU (kept only when asked)."""
        return torch.cat(self._log_posteriors).cpu()

    def rows(self, dataset) -> np.ndarray:
        """The row ids of ``dataset`` (a split's) that the frames so far are, in order: all of
        them, or with ``limit_{val,test}_batches`` the first ones."""
        return dataset.rows.numpy()[: self.frames]

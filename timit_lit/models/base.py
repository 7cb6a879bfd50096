"""The phone classifiers' common LightningModule."""

from __future__ import annotations

from typing import Optional

import pytorch_lightning as pl
import torch
from torch.nn import functional as F
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from timit_lit.decoding import STATISTICS_KEY, PhoneStatistics
from timit_lit.errors import InputError

UNLABELLED = -1  # the target of a frame that is input but not scored (as padding's, timit_lit.data.UtteranceDataset)


class PhoneModel(pl.LightningModule):
    """What every network of this project shares: cross-entropy on the labelled frames,
    torchmetrics accuracy, epoch-level logging, Adam, predictions as (row id, class,
    posteriors) per frame, so the CSV writer and the decoder never see the network, and
    the phone statistics of its training split, for the decoder, carried in its checkpoints.

    A subclass builds its network and says, in :meth:`frame_logits`, how a batch becomes
    one row of logits per real frame. The CLI takes any subclass as ``model.class_path``
    (default :class:`PhoneClassifier`). ``batch_by`` names the batches it takes
    (:class:`timit_lit.data.TimitDataModule`'s option of that name).
    """

    batch_by = "rows"
    label_smoothing = 0.0  # of the training loss; a subclass may take it as an option

    def __init__(self, num_classes: int, lr: float):
        super().__init__()
        # validate_args=False: the data module has checked the labels, and the checks
        # would synchronise with the device on every step.
        # Frames labelled UNLABELLED (test rows and held-out labels inside utterances) count nowhere.
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False, ignore_index=UNLABELLED)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False, ignore_index=UNLABELLED)
        self.test_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False, ignore_index=UNLABELLED)
        # Validation counts (true x predicted) for TensorBoard's figures (timit_lit.callbacks.monitoring);
        # they add up on the device, read once per epoch. Not part of the checkpoint.
        self.val_confusion = MulticlassConfusionMatrix(num_classes, validate_args=False, ignore_index=UNLABELLED)
        self.lr = lr
        # Counted by fit (timit_lit.callbacks.ViterbiEvaluation), saved and read back with the
        # checkpoint, so that decoding needs no training files; None if not yet known.
        self.phone_statistics: Optional[PhoneStatistics] = None

    def setup(self, stage: str) -> None:
        data = getattr(self.trainer, "datamodule", None)
        if data is not None and getattr(data, "batch_by", self.batch_by) != self.batch_by:
            raise InputError(f"model {type(self).__name__} takes batches of {self.batch_by}: set data.batch_by {self.batch_by}")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Here rather than in the decoder's callback: Lightning skips callbacks' hooks for weights-only checkpoints.
        if self.phone_statistics is not None:
            checkpoint[STATISTICS_KEY] = self.phone_statistics.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Lightning restores callbacks' state only when fitting, so the decoder finds them here.
        # A fit keeps those it has just counted from its own training split.
        fitting = self._trainer is not None and self._trainer.state.fn == "fit"
        if not fitting:
            saved = checkpoint.get(STATISTICS_KEY)
            self.phone_statistics = PhoneStatistics.from_state_dict(saved) if saved is not None else None

    def frame_logits(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, targets)``: one row of class logits per real frame of ``batch``, in the
        batch's frame order, and each frame's label (:data:`UNLABELLED` where the frame is
        input only) or, in ``predict``, its row id."""
        raise NotImplementedError

    def _evaluate(self, batch, accuracy: MulticlassAccuracy, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and accuracy of one batch, logged as epoch averages under ``stage/``; returns
        the loss and the frame logits."""
        logits, y = self.frame_logits(batch)
        loss = F.cross_entropy(logits, y, ignore_index=UNLABELLED,
                               label_smoothing=self.label_smoothing if stage == "train" else 0.0)
        accuracy.update(logits, y)
        if stage == "val":
            self.val_confusion.update(logits, y)
        # Epoch-level only: per-step logging would cost time on every step.
        # Weighted by the frames the loss averages over: the labelled ones.
        labelled = int((y != UNLABELLED).sum())
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, batch_size=labelled, sync_dist=True)
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=stage != "train")
        return loss, logits

    def training_step(self, batch, batch_idx: int) -> Optional[torch.Tensor]:
        return self._evaluate(batch, self.train_acc, "train")[0]

    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        """Returns the frame logits, which Viterbi decoding (timit_lit.decoding) collects."""
        return self._evaluate(batch, self.val_acc, "val")[1]

    def on_validation_epoch_start(self) -> None:
        self.val_confusion.reset()

    def test_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch, self.test_acc, "test")[1]

    def predict_step(self, batch, batch_idx: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns each frame's row id in the file, its predicted class and its class posteriors."""
        logits, row_ids = self.frame_logits(batch)
        return row_ids, logits.argmax(dim=1), logits.softmax(dim=1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam at ``lr``; ``--optimizer`` / ``--lr_scheduler`` on the command line replace it."""
        return torch.optim.Adam(self.parameters(), lr=self.lr)

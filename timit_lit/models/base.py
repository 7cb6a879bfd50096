"""The phone classifiers' common LightningModule."""

from __future__ import annotations

from typing import Optional

import numpy as np
import pytorch_lightning as pl
import torch
from torch.nn import functional as F
from torchmetrics import Metric
from torchmetrics.classification import MulticlassConfusionMatrix

from timit_lit.data.datasets import TAUGHT, UNLABELLED  # noqa: F401 (UNLABELLED: documented beside IGNORED)
from timit_lit.decoding import STATISTICS_KEY, PhoneStatistics
from timit_lit.errors import InputError
from timit_lit.lightning_api import is_fitting

# The target of a padding frame (a slot of a padded utterance batch past the utterance's end):
# the loss and the accuracy skip it, and so do validation's, test's and predict's outputs.
IGNORED = -1
# The target of a real frame that is input only (UNLABELLED, timit_lit.data.datasets): the loss
# and the accuracy skip it too, but validation's and test's outputs keep it, for decoding.

# The buffers of the model's state_dict that hold its phone statistics (timit_lit.decoding.PhoneStatistics).
# float32 counts: exact below 2**24, and left as they are by Lightning's weight averaging, which
# averages buffers too (an average of equal floats is that float; of integers, it rounds).
STATISTICS_BUFFERS = ("phone_frames", "phone_initial", "phone_transitions", "phone_smoothing")


def statistics_buffers(stats: Optional[PhoneStatistics], num_classes: int) -> dict[str, torch.Tensor]:
    """The values of :data:`STATISTICS_BUFFERS` for ``stats``; zero counts where there are none."""
    if stats is None:
        zeros = np.zeros(num_classes, dtype=np.int64)
        stats = PhoneStatistics(zeros, zeros, np.zeros((num_classes, num_classes), dtype=np.int64))
    # Copies (torch.tensor), never views: each buffer has storage of its own.
    return {"phone_frames": torch.tensor(stats.frames, dtype=torch.float32),
            "phone_initial": torch.tensor(stats.initial, dtype=torch.float32),
            "phone_transitions": torch.tensor(stats.transitions, dtype=torch.float32),
            "phone_smoothing": torch.tensor(stats.smoothing, dtype=torch.float32)}


def training_statistics(dataset, num_classes: int) -> PhoneStatistics:
    """The statistics of the labelled rows of a training ``dataset``, segmented by utterance,
    at the split's cuts and at unlabelled rows (its ``row_space``), so no transition joins two
    utterances or the two sides of a cut or a gap."""
    rows = dataset.rows.numpy()
    rows = rows[dataset.labels[rows] >= 0]
    labels, offsets = dataset.row_space.in_utterances(rows, dataset.labels[rows])
    return PhoneStatistics.estimate(labels, offsets, num_classes)


class FrameMean(Metric):
    """An average per frame over an epoch, from per-batch sums and frame counts kept on the
    device and summed over processes: what Lightning's ``self.log(value, batch_size=n)``
    computes, with ``n`` a tensor (the real frames of a padded batch), so no step reads it.
    torchmetrics' own ``MeanMetric`` drops its weights when its NaN checks (host reads) are
    off, and ``MulticlassAccuracy(ignore_index=...)`` drops ignored frames by boolean indexing."""

    full_state_update = False

    def __init__(self, dtype: torch.dtype = torch.float32):
        super().__init__()
        # float32 sums as Lightning's; accuracy counts correct frames in int64 (exact at any size).
        self.add_state("total", torch.tensor(0, dtype=dtype), dist_reduce_fx="sum")
        self.add_state("frames", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, total: torch.Tensor, frames: torch.Tensor) -> None:
        self.total += total
        self.frames += frames

    def compute(self) -> torch.Tensor:
        return self.total / self.frames


class PhoneModel(pl.LightningModule):
    """What every network of this project shares: cross-entropy on the labelled frames,
    frame accuracy, epoch-level logging, Adam, predictions as (row id, class,
    posteriors) per frame, so the CSV writer and the decoder never see the network, and
    the phone statistics of its training split (:attr:`phone_statistics`), which every decoder
    takes from it: counted when a fit starts, whether decoding is enabled or not, and kept as
    buffers of its ``state_dict``, so that a checkpoint decodes without the training files.

    A subclass builds its network and says, in :meth:`frame_logits`, how a batch becomes
    one row of logits per frame (padding's rows ignored). The CLI takes any subclass as
    ``model.class_path`` (default :class:`PhoneClassifier`). ``batch_by`` names the batches it takes
    (:class:`timit_lit.data.TimitDataModule`'s option of that name).
    """

    batch_by = "rows"
    label_smoothing = 0.0  # of the training loss; a subclass may take it as an option
    # The weight of a teacher's posteriors (data.soft_targets) in the training loss, against the
    # labels' (1 - it); a subclass whose batches carry them may take it as an option.
    distillation_weight = 0.0
    # Optimizer steps per training batch: above 1 the data module hands over a list of that
    # many batches (PhoneClassifier, which decides it when a fit starts, takes the steps itself).
    steps_per_call = 1

    def __init__(self, num_classes: int, lr: float):
        super().__init__()
        # Loss and accuracy per frame, summed on the device and read once per epoch (no host read per step).
        self.train_loss, self.val_loss, self.test_loss = FrameMean(), FrameMean(), FrameMean()
        self.train_acc, self.val_acc, self.test_acc = FrameMean(torch.long), FrameMean(torch.long), FrameMean(torch.long)
        # Validation counts (true x predicted) for TensorBoard's figures (timit_lit.callbacks.monitoring);
        # they add up on the device, read once per epoch. Not part of the checkpoint.
        # validate_args=False: the data module has checked the labels, and the checks would read the device.
        self.val_confusion = MulticlassConfusionMatrix(num_classes, validate_args=False)
        self.lr = lr
        for name, value in statistics_buffers(None, num_classes).items():
            self.register_buffer(name, value)
        # What this fit counted: the buffers' values, kept apart from them while it runs, because
        # Lightning's weight averaging averages buffers too, from a copy made before the count.
        self._fit_statistics: Optional[PhoneStatistics] = None

    @property
    def phone_statistics(self) -> Optional[PhoneStatistics]:
        """The phone statistics of the training split (:class:`timit_lit.decoding.PhoneStatistics`);
        None where no fit has counted them (a checkpoint from before they were saved)."""
        if self._fit_statistics is not None:
            return self._fit_statistics
        if int(self.phone_frames.sum()) == 0:
            return None
        counts = (getattr(self, name).cpu().double().numpy().astype(np.int64) for name in STATISTICS_BUFFERS[:3])
        return PhoneStatistics(*counts, float(self.phone_smoothing))

    @phone_statistics.setter
    def phone_statistics(self, stats: Optional[PhoneStatistics]) -> None:
        for name, value in statistics_buffers(stats, len(self.phone_frames)).items():
            getattr(self, name).copy_(value)

    def setup(self, stage: str) -> None:
        data = getattr(self.trainer, "datamodule", None)
        if data is not None and getattr(data, "batch_by", self.batch_by) != self.batch_by:
            raise InputError(f"model {type(self).__name__} takes batches of {self.batch_by}: set data.batch_by {self.batch_by}")
        if stage == "fit" and data is not None:
            teacher = getattr(data, "soft_targets", None)
            if self.distillation_weight > 0 and not teacher:
                raise InputError(f"model.distillation_weight {self.distillation_weight} needs a teacher's posteriors: "
                                 f"set data.soft_targets")
            if teacher and not self.distillation_weight > 0:
                raise InputError(f"data.soft_targets {teacher} is given, but model {type(self).__name__} does not learn "
                                 f"from it (model.distillation_weight 0)")
            if hasattr(data, "dataset"):  # decoding on or off: any checkpoint of the fit can be decoded later
                self.phone_statistics = training_statistics(data.dataset("train"), len(self.phone_frames))
                self._fit_statistics = self.phone_statistics

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # After the callbacks' hooks, so after weight averaging has put its average's state_dict there.
        if self._fit_statistics is not None:
            checkpoint["state_dict"].update(statistics_buffers(self._fit_statistics, len(self.phone_frames)))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Before Lightning loads the ``state_dict``: a fit keeps the statistics it has just
        counted from its own training split; a checkpoint from before they were buffers, which
        kept them beside the weights (:data:`~timit_lit.decoding.STATISTICS_KEY`) or not at
        all, gets them where ``load_state_dict`` finds them (zero counts: not known)."""
        state = checkpoint.get("state_dict")
        if state is None:
            return
        if is_fitting(self):
            state.update({name: getattr(self, name).clone() for name in STATISTICS_BUFFERS})
        elif STATISTICS_BUFFERS[0] not in state:
            saved = checkpoint.get(STATISTICS_KEY)
            stats = PhoneStatistics.from_state_dict(saved) if saved is not None else None
            state.update(statistics_buffers(stats, len(self.phone_frames)))

    def frame_logits(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, targets)``: one row of class logits per frame of ``batch``, in the batch's
        frame order, and each frame's label (or, in ``predict``, its row id). A batch of padded
        utterances gives a row for every frame slot, its padding included, with the target
        :data:`IGNORED` there: the rows keep their shapes, so no step waits to count the real
        frames (:meth:`real_frames` drops the padding where an output needs it)."""
        raise NotImplementedError

    def real_frames(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`frame_logits`' rows without the padding, in float32 (for decoding, posteriors
        and figures, whatever the training precision). Row batches hold no padding; utterance
        batches are cut by boolean indexing, which reads the device once (evaluation only)."""
        if self.batch_by != "rows":
            real = targets != IGNORED
            logits, targets = logits[real], targets[real]
        return logits.float(), targets

    def training_loss(self, logits: torch.Tensor, targets: torch.Tensor,
                      teacher: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The loss training minimises, on one row of logits per frame: the mean cross-entropy
        over labelled frames (padding's :data:`IGNORED` and unlabelled frames' targets skipped) with the model's
        ``label_smoothing`` (evaluation reports it plain). Lightning's steps and the model's own
        (:class:`~timit_lit.models.train_steps.TrainSteps`) both call this.

        With a ``teacher``'s posteriors (one row per frame, as ``logits``), distillation: on
        each labelled frame that loss weighs ``1 - distillation_weight``, and the cross-entropy
        against the teacher's posteriors the rest (Hinton et al.'s soft targets, temperature 1);
        a :data:`~timit_lit.data.datasets.TAUGHT` frame (a test row, ``data.test_targets``)
        has the teacher's cross-entropy alone. The mean is over labelled and taught frames."""
        if teacher is None:
            return F.cross_entropy(logits, targets.clamp(min=IGNORED), ignore_index=IGNORED,
                                   label_smoothing=self.label_smoothing)
        # Sums over the frames, kept on the device: no step reads a count.
        labels = F.cross_entropy(logits, targets.clamp(min=IGNORED), ignore_index=IGNORED,
                                 label_smoothing=self.label_smoothing, reduction="sum")
        labelled, taught = (targets >= 0).to(logits.dtype), (targets == TAUGHT).to(logits.dtype)
        soft = -(teacher.to(logits.dtype) * logits.log_softmax(dim=1)).sum(dim=1)
        w = self.distillation_weight
        total = (1 - w) * labels + w * (soft * labelled).sum() + (soft * taught).sum()
        return total / (labelled.sum() + taught.sum()).clamp(min=1)

    def teacher_posteriors(self, batch) -> Optional[torch.Tensor]:
        """A teacher's posteriors for each of :meth:`frame_logits`' rows, where the training batch
        carries them (``data.soft_targets``); None otherwise, and for networks whose batches never do."""
        return None

    def _evaluate(self, batch, stage: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss and accuracy of one batch over its real frames, logged as epoch averages under
        ``stage/``; returns the loss, the frame logits and their targets (padding: IGNORED)."""
        logits, y = self.frame_logits(batch)
        loss = (self.training_loss(logits, y, self.teacher_posteriors(batch)) if stage == "train"
                else F.cross_entropy(logits, y.clamp(min=IGNORED), ignore_index=IGNORED))
        frames = (y >= 0).sum()  # labelled frames: padding (IGNORED) and UNLABELLED frames are neither
        losses, accuracy = getattr(self, f"{stage}_loss"), getattr(self, f"{stage}_acc")
        losses.update(loss.detach() * frames, frames)
        accuracy.update((logits.detach().argmax(dim=1) == y).sum(), frames)  # a padding target (-1) is never a class
        # Epoch-level only: per-step logging would cost time on every step. The metrics sum over processes.
        self.log(f"{stage}/loss", losses, on_step=False, on_epoch=True)
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=stage != "train")
        return loss, logits, y

    def training_step(self, batch, batch_idx: int) -> Optional[torch.Tensor]:
        return self._evaluate(batch, "train")[0]

    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        """Returns the real frames' logits (float32), which the evaluations that score the whole epoch
        collect (:class:`~timit_lit.callbacks.outputs.EvaluationOutputs`)."""
        logits, y = self.real_frames(*self._evaluate(batch, "val")[1:])
        if self.batch_by == "rows":  # every row is labelled: counted as is, without reading the device
            self.val_confusion.update(logits, y)
        else:  # unlabelled frames inside utterances (split labels) are decoded, not counted
            labelled = y >= 0
            self.val_confusion.update(logits[labelled], y[labelled])
        return logits

    def on_validation_epoch_start(self) -> None:
        self.val_confusion.reset()

    def test_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self.real_frames(*self._evaluate(batch, "test")[1:])[0]

    def predict_step(self, batch, batch_idx: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns each frame's row id in the file, its predicted class and its class posteriors (float32)."""
        logits, row_ids = self.real_frames(*self.frame_logits(batch))
        return row_ids, logits.argmax(dim=1), logits.softmax(dim=1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam at ``lr``; ``--optimizer`` / ``--lr_scheduler`` on the command line replace it."""
        return torch.optim.Adam(self.parameters(), lr=self.lr)

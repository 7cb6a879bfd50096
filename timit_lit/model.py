"""The phone classifiers' common LightningModule, and the course notebook's MLP wrapped in it."""

from __future__ import annotations

from typing import Literal, Optional, Union

import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F
from pytorch_lightning.utilities.rank_zero import rank_zero_info
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from timit_lit.train_steps import TrainSteps, auto_steps_per_call, why_lightning_steps
from timit_lit.data import InputError
from timit_lit.decoding import STATISTICS_KEY, PhoneStatistics

UNLABELLED = -1  # the target of a frame that is input but not scored (as padding's, timit_lit.data.UtteranceDataset)
ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "gelu": nn.GELU}


def mlp(
    input_dim: int,
    hidden_sizes: tuple[int, ...],
    num_classes: int,
    activation: str,
    batch_norm: bool = False,
    dropout: float = 0.0,
) -> nn.Sequential:
    """Linear layers with an activation between them and none on the output (logits);
    each hidden layer optionally followed by batch norm (before the activation) and dropout.

    With the defaults this is the notebook's ``Classifier``: 429-1024-512-128-39 with
    sigmoids, its linear layers created in the same order, so the same seed gives the
    same initial weights (batch norm and dropout draw nothing at creation).
    """
    layers: list[nn.Module] = []
    widths = [input_dim, *hidden_sizes]
    for n_in, n_out in zip(widths[:-1], widths[1:]):
        layers.append(nn.Linear(n_in, n_out))
        if batch_norm:
            layers.append(nn.BatchNorm1d(n_out))
        layers.append(ACTIVATIONS[activation]())
        if dropout:
            layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(widths[-1], num_classes))
    return nn.Sequential(*layers)


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
        # would synchronise with the device on every step. Frames labelled UNLABELLED
        # (test rows and held-out labels inside utterances) count nowhere.
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False, ignore_index=UNLABELLED)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False, ignore_index=UNLABELLED)
        self.test_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False, ignore_index=UNLABELLED)
        # Validation counts (true x predicted) for TensorBoard's figures (timit_lit.monitoring);
        # they add up on the device, read once per epoch. Not part of the checkpoint.
        self.val_confusion = MulticlassConfusionMatrix(num_classes, validate_args=False, ignore_index=UNLABELLED)
        self.lr = lr
        # Counted by fit (timit_lit.decoding.ViterbiEvaluation), saved and read back with the
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


class PhoneClassifier(PhoneModel):
    """Framewise phone classification: cross-entropy, Adam, accuracy from torchmetrics.

    Args:
        input_dim: features per row (linked from the data by the CLI).
        num_classes: phone classes (linked from the data by the CLI).
        hidden_sizes: widths of the hidden layers (as many as you like).
        activation: non-linearity between layers.
        batch_norm: batch normalisation after each hidden linear layer.
        dropout: dropout probability after each hidden activation (0: none).
        lr: Adam learning rate.
        steps_per_call: optimizer steps per Lightning training step (linked from the
            data, which then hands over a list of that many batches). Above 1 the model
            takes the steps itself (:mod:`timit_lit.train_steps`: one process, 32-bit
            precision, no per-step Lightning hooks); the updates stay exactly those of 1.
            ``auto`` (the default) chooses it when the fit starts: the model's own steps
            where the run allows them (:func:`~timit_lit.train_steps.why_lightning_steps`),
            else Lightning's, said in one info line.
        cuda_graph: replay each full training step as a CUDA graph (one GPU, 32-bit
            precision; see :mod:`timit_lit.train_steps`). Adam then runs fused and
            ``capturable``, which rounds differently from the default in the last bits.
    """

    def __init__(
        self,
        input_dim: int = 429,
        num_classes: int = 39,
        hidden_sizes: tuple[int, ...] = (1024, 512, 128),
        activation: Literal["sigmoid", "relu", "gelu"] = "sigmoid",
        batch_norm: bool = False,
        dropout: float = 0.0,
        lr: float = 1e-4,
        steps_per_call: Union[int, Literal["auto"]] = "auto",
        cuda_graph: bool = False,
    ):
        super().__init__(num_classes, lr)
        self.save_hyperparameters()
        self.net = mlp(input_dim, tuple(hidden_sizes), num_classes, activation, batch_norm, dropout)
        # With "auto", Lightning's steps until on_fit_start decides.
        self.automatic_optimization = steps_per_call in (1, "auto") and not cuda_graph
        self._steps: Optional[TrainSteps] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def frame_logits(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        return self(x), y

    def training_step(self, batch, batch_idx: int) -> Optional[torch.Tensor]:
        if self.automatic_optimization:
            return super().training_step(batch, batch_idx)
        # A list of batches (steps_per_call > 1): one Adam step on each, outside Lightning's
        # per-step hooks, loss and accuracy summed on the device; one log call for all.
        batches = batch if isinstance(batch, list) else [batch]
        if self._steps is None:
            optimizer = self.optimizers().optimizer  # the torch optimizer itself
            self._steps = TrainSteps(self.net, optimizer, self.device, graph=self.hparams.cuda_graph)
        epoch_loop = self.trainer.fit_loop.epoch_loop
        progress = epoch_loop.manual_optimization.optim_step_progress  # global_step
        for x, y in batches:
            progress.increment_ready()
            self._steps(x, y)
            progress.increment_completed()
        # Lightning counts this call as one batch; count every step, so that the logged curves'
        # steps (TensorBoard's x axis) are optimizer steps, as with steps_per_call 1.
        epoch_loop._batches_that_stepped += len(batches) - 1
        loss_sum, correct = self._steps.take_totals()
        rows = sum(len(y) for _, y in batches)
        self.log("train/loss", loss_sum / rows, on_step=False, on_epoch=True, batch_size=rows)
        self.log("train/acc", correct / rows, on_step=False, on_epoch=True, batch_size=rows)
        return None

    @property
    def own_steps(self) -> Optional[str]:
        """The option that has the model take its optimizer steps itself; None when Lightning takes them."""
        if self.automatic_optimization:
            return None
        return "model.cuda_graph" if self.hparams.cuda_graph else "data.steps_per_call > 1"

    def on_fit_start(self) -> None:
        if self.hparams.steps_per_call == "auto":
            self._choose_steps_per_call()
        # What Lightning's steps would do and the model's own would not. Gradient clipping and
        # accumulation are refused before this hook runs, by the CLI (TimitCLI.before_fit).
        trainer, option = self.trainer, self.own_steps
        if option is None:
            return
        if trainer.lr_scheduler_configs:
            raise InputError(f"{option} takes the optimizer steps itself, and Lightning then steps no learning-rate "
                             f"scheduler: use steps_per_call 1 with a scheduler")
        needs_cuda = self.hparams.cuda_graph and self.device.type != "cuda"
        if needs_cuda or trainer.world_size > 1 or trainer.precision not in ("32-true", "32"):
            raise InputError(
                f"{option} needs one process{', on a CUDA device,' if self.hparams.cuda_graph else ''} and 32-bit "
                f"precision; this run has {self.device.type}, {trainer.world_size} process(es), precision "
                f"{trainer.precision} (use steps_per_call 1 and cuda_graph false)"
            )

    def on_train_start(self) -> None:
        # Lightning counts global_step in its own steps' counter or in the model's (manual
        # optimization), by the mode the run is in now. A run resumed in the other mode (steps_per_call
        # auto chooses afresh each time) counts on from its checkpoint: the steps move to the counter in use.
        loop = self.trainer.fit_loop.epoch_loop
        lightning = loop.automatic_optimization.optim_progress.optimizer.step.total
        own = loop.manual_optimization.optim_step_progress.total
        source, target = (own, lightning) if self.automatic_optimization else (lightning, own)
        if source.completed:
            target.ready, target.completed = target.ready + source.ready, target.completed + source.completed
            source.ready = source.completed = 0

    def _choose_steps_per_call(self) -> None:
        """``steps_per_call: auto``: as many steps per call as :func:`auto_steps_per_call` says,
        taken by the model (the same updates, bit for bit), unless the run needs Lightning's steps."""
        data = getattr(self.trainer, "datamodule", None)
        if not hasattr(data, "steps_per_call"):
            return  # dataloaders not from TimitDataModule, which alone hands over lists of batches
        steps = auto_steps_per_call(data.batch_size)
        if steps == 1 and not self.hparams.cuda_graph:
            return
        reason = None if self.hparams.cuda_graph else why_lightning_steps(self.trainer, self, PhoneClassifier)
        if reason is not None:
            rank_zero_info(f"timit_lit: data.steps_per_call auto is 1 here, as {reason}: Lightning takes each optimizer "
                           f"step (the same updates, slower at small batches; see docs/speed.md)")
            return
        data.steps_per_call = steps
        self.automatic_optimization = False

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.hparams.cuda_graph:  # graph-safe, and one fused kernel instead of ~20 per step
            return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, capturable=True, fused=True)
        return super().configure_optimizers()

"""The course notebook's MLP, wrapped in :class:`~timit_lit.models.base.PhoneModel`."""

from __future__ import annotations

from typing import Literal, Optional, Union

import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_info
from torch import nn

from timit_lit.data import TimitDataModule
from timit_lit.errors import InputError
from timit_lit.lightning_api import count_own_optimizer_steps, move_optimizer_steps
from timit_lit.models.base import PhoneModel
from timit_lit.models.train_steps import TrainSteps, auto_steps_per_call, why_lightning_steps

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


class PhoneClassifier(PhoneModel):
    """The notebook's MLP over each row's context window (:func:`mlp`: its widths, activation,
    batch norm and dropout), with optimizer steps taken several to a Lightning step
    (``steps_per_call``) or replayed as a CUDA graph; loss, metrics and Adam are :class:`PhoneModel`'s.

    Args:
        input_dim: features per row (linked from the data by the CLI).
        num_classes: phone classes (linked from the data by the CLI).
        hidden_sizes: widths of the hidden layers (as many as you like).
        activation: non-linearity between layers.
        batch_norm: batch normalisation after each hidden linear layer.
        dropout: dropout probability after each hidden activation (0: none).
        lr: Adam learning rate.
        label_smoothing: of the training loss (validation and test report plain cross-entropy).
        steps_per_call: optimizer steps per Lightning training step. Above 1 the data
            module hands over a list of that many batches of ``data.batch_size`` rows
            (consecutive batches of the one shuffled order) and the model takes one Adam
            step on each itself (:mod:`timit_lit.models.train_steps`: one process, 32-bit
            precision, no per-step Lightning hooks): the updates stay exactly those of 1,
            with Lightning's per-step overhead paid once per call (Keras calls this
            ``steps_per_execution``). ``auto`` (the default) chooses it when the fit starts:
            the model's own steps where the run allows them
            (:func:`~timit_lit.models.train_steps.why_lightning_steps`), else Lightning's,
            said in one info line. Decided in :meth:`on_fit_start`, kept as :attr:`steps_per_call`.
        cuda_graph: replay each full training step as a CUDA graph (one GPU, 32-bit
            precision; see :mod:`timit_lit.models.train_steps`). Adam then runs fused and
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
        label_smoothing: float = 0.0,
        steps_per_call: Union[int, Literal["auto"]] = "auto",
        cuda_graph: bool = False,
    ):
        super().__init__(num_classes, lr)
        self.save_hyperparameters()
        if not 0.0 <= label_smoothing < 1.0:
            raise InputError(f"model.label_smoothing must be in [0, 1), got {label_smoothing}")
        if steps_per_call != "auto" and steps_per_call < 1:
            raise InputError(f"model.steps_per_call must be auto or >= 1, got {steps_per_call}")
        self.label_smoothing = label_smoothing
        self.net = mlp(input_dim, tuple(hidden_sizes), num_classes, activation, batch_norm, dropout)
        # Lightning's steps (PhoneModel.steps_per_call 1, automatic optimization) until on_fit_start decides.
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
            self._steps = TrainSteps(self.net, self.training_loss, optimizer, self.device, graph=self.hparams.cuda_graph)
        for x, y in batches:
            self._steps(x, y)
        # Lightning counts this call as one batch; count every step in global_step and in the logged
        # curves' steps (TensorBoard's x axis), which are then optimizer steps, as with steps_per_call 1.
        count_own_optimizer_steps(self.trainer, len(batches))
        loss_sum, correct = self._steps.take_totals()
        rows = sum(len(y) for _, y in batches)
        self.log("train/loss", loss_sum / rows, on_step=False, on_epoch=True, batch_size=rows)
        self.log("train/acc", correct / rows, on_step=False, on_epoch=True, batch_size=rows)
        return None

    def on_fit_start(self) -> None:
        """Decides, for this fit, who takes the optimizer steps: :attr:`steps_per_call` (which
        the data module reads when it builds the training batches) and automatic optimization.
        Lightning verified the run while the model still said automatic optimization, so what
        its own steps would refuse (clipping, accumulation) is refused here, in one line."""
        self.steps_per_call = self._choose_steps_per_call()
        self.automatic_optimization = self.steps_per_call == 1 and not self.hparams.cuda_graph
        if self.automatic_optimization:
            return
        trainer = self.trainer
        option = "model.cuda_graph" if self.hparams.cuda_graph else "model.steps_per_call > 1"
        if trainer.gradient_clip_val or trainer.accumulate_grad_batches != 1:
            raise InputError(
                f"{option} takes the optimizer steps itself, so Lightning clips no gradients and accumulates no "
                f"batches: use steps_per_call 1 and cuda_graph false with trainer.gradient_clip_val or "
                f"trainer.accumulate_grad_batches"
            )
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
        # A run resumed in the other mode (steps_per_call auto chooses afresh each time) counts on
        # from its checkpoint: the steps move to the counter of the mode in use.
        move_optimizer_steps(self.trainer, to_manual=not self.automatic_optimization)

    def _choose_steps_per_call(self) -> int:
        """The option as set, or for ``auto`` as many steps per call as :func:`auto_steps_per_call`
        says, taken by the model (the same updates, bit for bit), unless the run needs Lightning's."""
        if self.hparams.steps_per_call != "auto":
            return self.hparams.steps_per_call
        data = getattr(self.trainer, "datamodule", None)
        if not isinstance(data, TimitDataModule):
            return 1  # other dataloaders hand over no lists of batches
        steps = auto_steps_per_call(data.batch_size)
        if steps == 1 or self.hparams.cuda_graph:
            return steps
        reason = why_lightning_steps(self.trainer, self, PhoneClassifier)
        if reason is not None:
            rank_zero_info(f"timit_lit: model.steps_per_call auto is 1 here, as {reason}: Lightning takes each optimizer "
                           f"step (the same updates, slower at small batches; see docs/speed.md)")
            return 1
        return steps

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.hparams.cuda_graph:  # graph-safe, and one fused kernel instead of ~20 per step
            return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, capturable=True, fused=True)
        return super().configure_optimizers()

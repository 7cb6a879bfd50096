"""Training steps taken outside Lightning's per-step machinery: ``model.steps_per_call > 1``
and ``model.cuda_graph``.

At the notebook's batch of 64 the MLP's step is tiny, and what surrounds it costs as much:
Lightning's hooks around every backward and optimizer step, the metric update. Here each
step is just zero_grad, forward, the model's training loss, backward and Adam, with the loss and the correct
predictions summed on the device (read once per Lightning step, by the model's logging).
The updates are exactly those Lightning's automatic optimization makes.

With ``graph=True`` (CUDA only) a full step is also recorded once as a CUDA graph and then
replayed with one launch, so the GPU, not Python, sets the pace. This is PyTorch's "whole
network capture" recipe (https://pytorch.org/docs/stable/notes/cuda.html#whole-network-capture):

- the first steps run eagerly on a side stream (real training steps on real batches), so
  that cuBLAS workspaces and Adam's state exist before recording;
- the next full batch is copied into fixed input tensors and its step is recorded, then
  replayed; every later full batch is copied into the same tensors and replayed;
- a batch of another size (the last, short batch of an epoch) runs eagerly.
Adam must be ``capturable=True`` (its step counters live on the GPU); the model makes it
``fused`` too: one kernel for all parameters instead of a series of multi-tensor kernels.
"""

from __future__ import annotations

from typing import Callable, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar, Timer
from pytorch_lightning.utilities.model_helpers import is_overridden
from torch import nn

from timit_lit.lightning_api import every_n_train_steps

WARMUP_STEPS = 3
# ``model.steps_per_call: auto`` hands the model about this many rows per Lightning step; from
# this batch size up, Lightning takes each step itself (its overhead no longer counts).
AUTO_ROWS_PER_CALL = 2048
# Hooks Lightning runs around each of its own optimizer steps; the model's own steps run none.
SKIPPED_HOOKS = ("on_before_zero_grad", "on_before_backward", "on_after_backward", "on_before_optimizer_step")
# Model methods whose override means the model trains in its own way.
TRAINING_METHODS = ("training_step", "backward", "optimizer_step", "optimizer_zero_grad", "configure_gradient_clipping",
                    "on_train_batch_start", "on_train_batch_end", *SKIPPED_HOOKS)


# Callbacks whose on_train_batch_start / _end do the same on one call of several steps as on
# each of them (a checkpoint every N train steps is checked apart): these of Lightning's, and
# any whose class says so with ``batch_hooks_per_call = True`` (this project's EpochThroughput;
# the networks do not import the callbacks, which are a layer above them).
PER_CALL_CALLBACKS = (ProgressBar, ModelCheckpoint, LearningRateMonitor, Timer)


def takes_a_call_per_batch(callback: pl.Callback) -> bool:
    """Whether ``callback``'s batch hooks do the same on one call of several steps as on each step."""
    return isinstance(callback, PER_CALL_CALLBACKS) or getattr(type(callback), "batch_hooks_per_call", False) is True


def auto_steps_per_call(batch_size: int) -> int:
    """The optimizer steps per Lightning step that ``model.steps_per_call: auto`` asks for."""
    return max(1, AUTO_ROWS_PER_CALL // batch_size)


def why_lightning_steps(trainer: "pl.Trainer", model: "pl.LightningModule", base: type) -> Optional[str]:
    """Why this fit must leave each optimizer step to Lightning (None if the model may take
    them itself with the same result): what Lightning would do per step and the model's own
    steps would not, or a limit counted in Lightning steps, which would then mean calls."""
    if trainer.world_size > 1:
        return f"it runs {trainer.world_size} processes"
    if trainer.precision not in ("32-true", "32"):
        return f"precision is {trainer.precision}"
    if trainer.lr_scheduler_configs:
        return "a learning-rate scheduler is set"
    if trainer.gradient_clip_val or trainer.accumulate_grad_batches != 1:
        return "gradient clipping or accumulation is set"
    for name, default in (("max_steps", -1), ("limit_train_batches", 1.0), ("val_check_interval", 1.0)):
        value = getattr(trainer, name)
        if value != default or type(value) is not type(default):
            return f"trainer.{name} is set (it counts Lightning steps)"
    overridden = [f"{type(model).__name__}.{name}" for name in TRAINING_METHODS if is_overridden(name, model, base)]
    for callback in trainer.callbacks:
        hooks = SKIPPED_HOOKS
        if not takes_a_call_per_batch(callback):  # its batch hooks would see a call's list of batches
            hooks += ("on_train_batch_start", "on_train_batch_end")
        overridden += [f"{type(callback).__name__}.{name}" for name in hooks if is_overridden(name, callback, pl.Callback)]
        if every_n_train_steps(callback):
            overridden.append(f"{type(callback).__name__} every_n_train_steps")
    if overridden:
        return f"{', '.join(overridden)} must run on every step"
    return None


class TrainSteps:
    """Takes training steps of ``net`` on ``loss`` (the model's :meth:`~timit_lit.models.PhoneModel.training_loss`)
    with ``optimizer``; with ``graph``, full batches are replayed as a CUDA graph."""

    def __init__(self, net: nn.Module, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 optimizer: torch.optim.Optimizer, device: torch.device, graph: bool = False):
        self.net = net
        self.loss = loss
        self.optimizer = optimizer
        self.graph_wanted = graph
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.x = self.y = None  # the graph's fixed inputs, made at the first full batch
        self.eager_steps = 0

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        logits = self.net(x)
        loss = self.loss(logits, y)
        loss.backward()
        self.optimizer.step()
        self.loss_sum += loss.detach() * len(y)
        self.correct += (logits.detach().argmax(dim=1) == y).sum()

    def _eager(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self._step(x, y)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if not self.graph_wanted:
            self._eager(x, y)
        elif self.x is None:  # the first batch sets the graph's batch size
            self.x, self.y = torch.zeros_like(x), torch.zeros_like(y)
            self._warmup(x, y)
        elif len(x) != len(self.x):
            self._eager(x, y)
        elif self.graph is None and self.eager_steps < WARMUP_STEPS:
            self._warmup(x, y)
        else:
            self.x.copy_(x)
            self.y.copy_(y)
            if self.graph is None:
                self.optimizer.zero_grad(set_to_none=True)  # gradients are then allocated inside the graph
                self.graph = torch.cuda.CUDAGraph()
                # thread_local: only this thread's CUDA calls are checked during capture, so a DataLoader
                # worker thread (pin_memory's) calling CUDA meanwhile does not break the capture.
                with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                    self._step(self.x, self.y)  # recorded, not run
            self.graph.replay()

    def _warmup(self, x: torch.Tensor, y: torch.Tensor) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._eager(x, y)
        torch.cuda.current_stream().wait_stream(side)
        self.eager_steps += 1

    def take_totals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed loss (x rows) and correct predictions since the last call; resets them (on the device)."""
        totals = self.loss_sum.clone(), self.correct.clone()
        self.loss_sum.zero_()
        self.correct.zero_()
        return totals

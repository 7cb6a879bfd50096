"""A whole training step (forward, loss, backward, Adam) replayed as one CUDA graph.

At the notebook's batch of 64 the MLP's step is some forty tiny kernels; launched one by
one from Python they take several times longer than the GPU needs to run them. A CUDA
graph records the step's kernels once and then launches all of them with one call, so
the GPU, not Python, sets the pace. This is PyTorch's "whole network capture" recipe
(https://pytorch.org/docs/stable/notes/cuda.html#whole-network-capture):

- the first steps run eagerly on a side stream (real training steps on real batches), so
  that cuDNN/cuBLAS workspaces and Adam's state exist before recording;
- the next full batch is copied into fixed input tensors and its step is recorded, then
  replayed; every later full batch is copied into the same tensors and replayed;
- a batch of another size (the last, short batch of an epoch) runs eagerly.
Adam must be ``capturable=True`` (its step counters live on the GPU); the model makes it
``fused`` too, one kernel for all parameters instead of about twenty. Loss and accuracy
are summed on the GPU inside the step, so nothing waits for the host.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

WARMUP_STEPS = 3


class GraphedTrainStep:
    """Runs training steps of ``net`` with ``optimizer``, replaying full batches as a CUDA graph."""

    def __init__(self, net: nn.Module, optimizer: torch.optim.Optimizer, batch_size: int, num_features: int, device):
        self.net = net
        self.optimizer = optimizer
        self.x = torch.zeros(batch_size, num_features, device=device)
        self.y = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.eager_steps = 0

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        self.optimizer.step()
        self.loss_sum += loss.detach() * len(y)
        self.correct += (logits.detach().argmax(dim=1) == y).sum()

    def _eager(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self._step(x, y)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if len(x) != len(self.x):
            self._eager(x, y)
        elif self.graph is None and self.eager_steps < WARMUP_STEPS:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._eager(x, y)
            torch.cuda.current_stream().wait_stream(side)
            self.eager_steps += 1
        else:
            self.x.copy_(x)
            self.y.copy_(y)
            if self.graph is None:
                self.optimizer.zero_grad(set_to_none=True)  # gradients are then allocated inside the graph
                self.graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self.graph):
                    self._step(self.x, self.y)  # recorded, not run
            self.graph.replay()

    def take_totals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed loss (x rows) and correct predictions since the last call; resets them (on the GPU)."""
        totals = self.loss_sum.clone(), self.correct.clone()
        self.loss_sum.zero_()
        self.correct.zero_()
        return totals

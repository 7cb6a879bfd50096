"""torch's float32 matmul precision, set for runs on CUDA devices only."""

from __future__ import annotations

from typing import Literal, Optional

import pytorch_lightning as pl
import torch


class CudaMatmulPrecision(pl.Callback):
    """Sets :func:`torch.set_float32_matmul_precision` when the run's device is a CUDA GPU:
    ``high`` lets the MLP's float32 matrix products use TF32 tensor cores (NVIDIA Ampere and
    later), as ``configs/gpu.yaml`` asks. A run on any other device is left exactly as it is
    (on some CPUs the same setting changes oneDNN's float32 products too).

    Args:
        float32: ``highest``, ``high`` or ``medium`` on a CUDA device; None (default): torch's own.
    """

    def __init__(self, float32: Optional[Literal["highest", "high", "medium"]] = None):
        self.float32 = float32

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.float32 is not None and trainer.strategy.root_device.type == "cuda":
            torch.set_float32_matmul_precision(self.float32)

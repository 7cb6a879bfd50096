"""Writing predictions as the course's Kaggle CSV (``Id,Class``), on one process or many."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.callbacks import BasePredictionWriter


def write_csv_atomically(path: Path, header: str, columns: Sequence[np.ndarray]) -> None:
    """Write ``header`` and one comma-joined line per row, via a temporary file and a rename,
    so a failure never leaves a truncated CSV (or destroys the previous one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", newline="") as f:
            f.write(header + "\n")
            f.writelines(",".join(map(str, values)) + "\n" for values in zip(*(c.tolist() for c in columns)))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class CsvPredictionWriter(BasePredictionWriter):
    """Writes ``Id,Class`` for every row of ``test_11.npy``, ids ``0..N-1`` in file order.

    Under DDP each process predicts a share of the rows; the row ids travel with the
    predictions, every process gathers all shares, and rank 0 alone writes the file, so
    1 or N processes give the same bytes.

    Args:
        output_path: where ``predict`` writes the CSV.
    """

    def __init__(self, output_path: str = "prediction.csv"):
        super().__init__(write_interval="epoch")
        self.output_path = Path(output_path)

    def write_on_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, predictions, batch_indices) -> None:
        ids = torch.cat([row_ids for row_ids, _ in predictions]).cpu().numpy()
        classes = torch.cat([cls for _, cls in predictions]).cpu().numpy()
        if dist.is_available() and dist.is_initialized() and trainer.world_size > 1:
            shares = [None] * trainer.world_size
            dist.all_gather_object(shares, (ids, classes))
            ids = np.concatenate([share[0] for share in shares])
            classes = np.concatenate([share[1] for share in shares])
        if not trainer.is_global_zero:
            return
        expected = len(trainer.predict_dataloaders.dataset)
        order = np.argsort(ids, kind="stable")
        if len(ids) != expected or not np.array_equal(ids[order], np.arange(expected)):
            raise RuntimeError(f"predictions cover {len(np.unique(ids))} distinct of {expected} rows ({len(ids)} in all)")
        write_csv_atomically(self.output_path, "Id,Class", [ids[order], classes[order]])

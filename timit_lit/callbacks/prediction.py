"""Writing predictions: the submission CSV and, optionally, each row's posteriors, on one process or many."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Literal, Optional, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.callbacks import BasePredictionWriter
from pytorch_lightning.utilities import rank_zero_info

from timit_lit.atomic import atomic_file
from timit_lit.errors import InputError, OutputError
from timit_lit.phones import PHONES

# The class column's name in each submission format.
CLASS_HEADERS = {"kaggle": "Class", "mle-bench": "ClassId"}


def check_writable(path: Path, option: str) -> None:
    """Fail before the work rather than after it: ``path``'s folder exists (made if needed)
    and takes a new file, and no folder stands at ``path``."""
    if path.is_dir():
        raise InputError(f"{path}: is a folder; {option} must name a file")
    existing = next(folder for folder in path.parents if folder.exists())
    if not existing.is_dir():
        raise InputError(f"{path}: {existing} is a file, not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as error:
        raise InputError(f"{path}: cannot write to its folder {path.parent} ({error.strerror or error})") from None


def write_atomically(path: Path, write: Callable[[object], None], mode: str = "w") -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it to ``path``, so
    a failure never leaves a truncated file (or destroys the previous one)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path, mode, **({"newline": ""} if "b" not in mode else {})) as f:
            write(f)
    except OSError as error:
        raise OutputError(f"{path}: cannot write ({error.strerror or error}); nothing written, "
                          f"any previous file kept") from None


def write_csv_atomically(path: Path, header: str, columns: Sequence[np.ndarray]) -> None:
    """Write ``header`` and one comma-joined line per row (its speed: docs/outputs.md)."""

    def write(f) -> None:
        f.write(header + "\n")
        f.writelines(",".join(map(str, values)) + "\n" for values in zip(*(c.tolist() for c in columns)))

    write_atomically(path, write)


class CsvPredictionWriter(BasePredictionWriter):
    """Writes the submission CSV for every row of ``test_11.npy`` (or of the data's
    ``predict_file``), ids ``0..N-1`` in file order, and optionally the rows' posteriors as
    a ``.npy`` array in the same order.

    Under DDP each process predicts a share of the rows; the row ids travel with the
    predictions, every process gathers all shares, and rank 0 alone writes the files, so
    1 or N processes give the same bytes. The row ids are those of the predict dataset's
    ``row_space``, which says which row of the predicted file each is. Where the CLI gives it
    a ``decoder`` (the enabled ``decoding`` or ``phone_decoding``), the classes written are
    the decoded ones rather than each row's most likely class.

    Args:
        output_path: where ``predict`` writes the CSV.
        format: ``kaggle``: header ``Id,Class`` (the course's competition); ``mle-bench``:
            header ``Id,ClassId`` (the MLE-bench grader). The lines are the same.
        with_phone: add a ``Phone`` column with the class's phone symbol (``iy`` ... ``sil``).
        posteriors_path: if set, also write each row's class probabilities (softmax),
            rows x classes in file order, as a ``.npy`` file there.
        posteriors_dtype: ``float32``, or ``float16`` for half the size.
    """

    def __init__(
        self,
        output_path: str = "prediction.csv",
        format: Literal["kaggle", "mle-bench"] = "kaggle",
        with_phone: bool = False,
        posteriors_path: Optional[str] = None,
        posteriors_dtype: Literal["float32", "float16"] = "float32",
    ):
        super().__init__(write_interval="epoch")
        self.output_path = Path(output_path)
        self.header = f"Id,{CLASS_HEADERS[format]}" + (",Phone" if with_phone else "")
        self.with_phone = with_phone
        self.posteriors_path = Path(posteriors_path) if posteriors_path else None
        self.posteriors_dtype = np.dtype(posteriors_dtype)
        # The columns of the CSV last written (rank 0), for timit_lit.run to return.
        self.written: Optional[dict[str, np.ndarray]] = None
        # The enabled decoder (timit_lit.callbacks.ViterbiEvaluation or PhoneDecoding), given by the CLI; None: argmax.
        self.decoder = None

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # On every process (rank 0 writes): all stop together rather than leave the others waiting.
        check_writable(self.output_path, "prediction.output_path")
        if self.posteriors_path is not None:
            check_writable(self.posteriors_path, "prediction.posteriors_path")
        num_classes = getattr(pl_module.hparams, "num_classes", len(PHONES))
        if self.with_phone and num_classes != len(PHONES):
            raise InputError(f"prediction.with_phone needs the {len(PHONES)} TIMIT phone classes; this model has {num_classes}")

    def write_on_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, predictions, batch_indices) -> None:
        ids = torch.cat([p[0] for p in predictions]).cpu().numpy()
        classes = torch.cat([p[1] for p in predictions]).cpu().numpy()
        decoder = self.decoder if self.decoder is not None and self.decoder.enabled else None
        posteriors = None
        if self.posteriors_path is not None or decoder is not None:
            posteriors = torch.cat([p[2] for p in predictions]).cpu().numpy()  # float32 until written
        if dist.is_available() and dist.is_initialized() and trainer.world_size > 1:
            shares = [None] * trainer.world_size
            dist.all_gather_object(shares, (ids, classes, posteriors))
            ids = np.concatenate([share[0] for share in shares])
            classes = np.concatenate([share[1] for share in shares])
            if posteriors is not None:
                posteriors = np.concatenate([share[2] for share in shares])
        if not trainer.is_global_zero:
            return
        dataset = trainer.predict_dataloaders.dataset
        space = getattr(dataset, "row_space", None)
        # ids are row ids of the dataset's row space (the predicted file's, or all files' in utterance order).
        order = np.argsort(ids, kind="stable")
        served = np.sort(dataset.rows.numpy())  # rows, whether batched as rows or utterances
        if not np.array_equal(ids[order], served):
            raise RuntimeError(f"predictions cover {len(np.unique(ids))} distinct of {len(served)} rows ({len(ids)} in all)")
        ids, classes = ids[order], classes[order]
        posteriors = posteriors[order] if posteriors is not None else None
        if decoder is not None:  # decoded over the predicted rows' utterances instead of each row's argmax
            log_posteriors = torch.from_numpy(posteriors.astype(np.float32)).clamp_min(1e-30).log()
            classes = decoder.decode(log_posteriors, ids, space, decoder.statistics(trainer, pl_module)).numpy()
            rank_zero_info(f"Classes decoded with {decoder.description()}")
        # The predicted file's rows, in its order (rows of other files served as context are left out).
        file_rows = space.file_row_ids(ids) if space is not None else ids
        order = np.flatnonzero(file_rows >= 0)[np.argsort(file_rows[file_rows >= 0], kind="stable")]
        if not np.array_equal(file_rows[order], np.arange(len(order))):
            predicted = space.file if space is not None else "the predicted file"
            raise RuntimeError(f"predictions cover {len(order)} rows of {predicted}, not rows 0..{len(order) - 1} once each")
        columns = [file_rows[order], classes[order]]
        if self.with_phone:
            columns.append(np.asarray(PHONES)[columns[1]])
        write_csv_atomically(self.output_path, self.header, columns)
        self.written = dict(zip(self.header.split(","), columns))
        rank_zero_info(f"Wrote {len(order):,} predictions to {self.output_path}")
        if self.posteriors_path is not None:
            write_atomically(self.posteriors_path, lambda f: np.save(f, posteriors[order].astype(self.posteriors_dtype)), mode="wb")
            rank_zero_info(f"Wrote their posteriors ({self.posteriors_dtype}) to {self.posteriors_path}")

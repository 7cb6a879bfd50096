"""Loading the HW2-1 ``timit_11`` files and splitting them for training.

The course's feature files are 2-4 GB, so they are memory-mapped, never copied: a batch
reads its rows straight from the map (and converts float64 to float32 then). Each file is
checked once, on first use, and any problem raises :class:`InputError` with a message that
names the file and what is wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from timit_lit.synthetic import has_timit_files, write_synthetic_timit

TRAIN_FEATURES = "train_11.npy"
TRAIN_LABELS = "train_label_11.npy"
TEST_FEATURES = "test_11.npy"
TEST_LABELS = "test_label_11.npy"


class InputError(ValueError):
    """Bad input: the message names the file and the problem; the CLI prints it on one line."""


def open_features(path: Path) -> np.ndarray:
    """Memory-map a 2-D float feature file (header only; rows are read on demand)."""
    if not path.is_file():
        raise InputError(f"{path}: file not found (expected a rows x features .npy array)")
    try:
        features = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as error:  # numpy raises several types for a file that is not .npy
        raise InputError(f"{path}: not a readable .npy file ({error})") from error
    if features.ndim != 2:
        raise InputError(f"{path}: features must be 2-D (rows x features), got shape {features.shape}")
    if not np.issubdtype(features.dtype, np.floating):
        raise InputError(f"{path}: features must be floating point, got dtype {features.dtype}")
    if len(features) == 0:
        raise InputError(f"{path}: holds no rows")
    return features


def check_finite(path: Path, features: np.ndarray, chunk_rows: int = 1 << 16) -> None:
    """Scan the features chunk by chunk (no full copy) and name the first row with NaN or inf."""
    for start in range(0, len(features), chunk_rows):
        finite = np.isfinite(features[start : start + chunk_rows]).all(axis=1)
        if not finite.all():
            row = start + int(np.argmin(finite))
            raise InputError(f"{path}: row {row} holds NaN or inf")


def load_labels(path: Path, n_rows: int, num_classes: int, features_path: Path) -> np.ndarray:
    """Read labels (strings like '12' as in the course files, or integers) as int64, checked."""
    if not path.is_file():
        raise InputError(f"{path}: file not found (expected the labels of {features_path.name})")
    try:
        raw = np.load(path, allow_pickle=False)
    except Exception as error:
        raise InputError(f"{path}: not a readable .npy file ({error})") from error
    if raw.ndim != 1:
        raise InputError(f"{path}: labels must be 1-D, got shape {raw.shape}")
    if len(raw) != n_rows:
        raise InputError(f"{path}: {len(raw)} labels for {n_rows} feature rows in {features_path.name}")
    if raw.dtype.kind in "US":
        try:
            labels = raw.astype(np.int64)
        except ValueError:
            bad = next(i for i, v in enumerate(raw) if not str(v).strip().lstrip("+-").isdigit())
            raise InputError(f"{path}: label {raw[bad]!r} at row {bad} is not an integer") from None
    elif raw.dtype.kind in "iu":
        labels = raw.astype(np.int64)
    elif raw.dtype.kind == "f":
        integral = np.isfinite(raw) & (raw == np.round(raw))
        if not integral.all():
            bad = int(np.argmin(integral))
            raise InputError(f"{path}: label {raw[bad]} at row {bad} is not an integer")
        labels = raw.astype(np.int64)
    else:
        raise InputError(f"{path}: labels must be integers or strings of integers, got dtype {raw.dtype}")
    outside = (labels < 0) | (labels >= num_classes)
    if outside.any():
        bad = int(np.argmax(outside))
        raise InputError(f"{path}: label {labels[bad]} at row {bad} is outside 0..{num_classes - 1}")
    return labels


class FrameDataset(Dataset):
    """Rows ``[start, stop)`` of a feature matrix, served a whole batch per call.

    ``__getitems__`` lets the DataLoader fetch a batch with one fancy-indexing read of the
    memory map instead of one call per row and a collate. Each item is ``(features,
    label)``, or ``(features, row id)`` when there are no labels, so that predictions made
    on several processes can be put back in file order.
    """

    def __init__(self, features: np.ndarray, labels: Optional[np.ndarray], start: int = 0, stop: Optional[int] = None):
        self.features = features
        self.labels = labels
        self.start = start
        self.stop = len(features) if stop is None else stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.asarray(indices, dtype=np.int64) + self.start
        x = torch.from_numpy(np.asarray(self.features[rows], dtype=np.float32))
        y = torch.from_numpy(self.labels[rows] if self.labels is not None else rows)
        return x, y

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([index])
        return x[0], y[0]


def keep_batch(batch):
    """Collate for :class:`FrameDataset`: its ``__getitems__`` already returns a batch."""
    return batch


class TimitDataModule(pl.LightningDataModule):
    """The HW2-1 files: ``train_11.npy`` + ``train_label_11.npy`` (fit, validate),
    ``test_11.npy`` (predict) and, where it exists, ``test_label_11.npy`` (test).

    Args:
        data_dir: folder holding the ``*_11.npy`` files.
        batch_size: training batch size (per process under DDP).
        eval_batch_size: batch size for validate, test and predict (no gradients are kept).
        val_ratio: the last ``val_ratio`` of the training rows validate, as in the
            notebook (rows are in time order, so the split is contiguous); 0 trains on
            everything and skips validation.
        num_classes: number of phone classes; labels must lie in ``0..num_classes-1``.
        num_workers: DataLoader worker processes (0 reads batches in the main process).
        synthetic: if the files are missing, write a synthetic set there first (the demo).
    """

    # Settings a trained model depends on: the CLI takes them from a checkpoint's
    # ``datamodule_hyper_parameters`` whenever it is given one.
    MODEL_DEFINING = ("num_classes",)

    def __init__(
        self,
        data_dir: str = "timit_11",
        batch_size: int = 64,
        eval_batch_size: int = 4096,
        val_ratio: float = 0.2,
        num_classes: int = 39,
        num_workers: int = 0,
        synthetic: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()  # into checkpoints, for `predict --ckpt_path` without a config
        if not 0.0 <= val_ratio < 1.0:
            raise InputError(f"val_ratio must be in [0, 1), got {val_ratio}")
        self.data_dir = Path(data_dir)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.val_ratio = val_ratio
        self.num_classes = num_classes
        self.num_workers = num_workers
        if synthetic and not has_timit_files(self.data_dir):
            write_synthetic_timit(self.data_dir)
        # The model's input width comes from the data; reading an .npy header is cheap.
        if not self.data_dir.is_dir():
            raise InputError(f"{self.data_dir}: data folder not found (expected {TRAIN_FEATURES}, {TRAIN_LABELS}, {TEST_FEATURES})")
        first = next((self.data_dir / n for n in (TRAIN_FEATURES, TEST_FEATURES) if (self.data_dir / n).exists()), None)
        if first is None:
            raise InputError(f"{self.data_dir}: neither {TRAIN_FEATURES} nor {TEST_FEATURES} is there")
        self.input_dim = int(open_features(first).shape[1])
        self._loaded: dict[str, FrameDataset] = {}

    def _features(self, name: str) -> np.ndarray:
        path = self.data_dir / name
        features = open_features(path)
        if features.shape[1] != self.input_dim:
            raise InputError(
                f"{path}: rows have {features.shape[1]} features, but the data's width is {self.input_dim} "
                f"(train and test files must match)"
            )
        check_finite(path, features)
        return features

    def _labelled(self, features_name: str, labels_name: str) -> tuple[np.ndarray, np.ndarray]:
        features = self._features(features_name)
        labels = load_labels(self.data_dir / labels_name, len(features), self.num_classes, self.data_dir / features_name)
        return features, labels

    def setup(self, stage: str) -> None:
        if stage in ("fit", "validate") and "train" not in self._loaded:
            features, labels = self._labelled(TRAIN_FEATURES, TRAIN_LABELS)
            n_train = int(len(features) * (1 - self.val_ratio))  # the notebook's rounding
            self._loaded["train"] = FrameDataset(features, labels, 0, n_train)
            self._loaded["val"] = FrameDataset(features, labels, n_train, len(features))
        if stage == "test" and "test" not in self._loaded:
            if not (self.data_dir / TEST_LABELS).is_file():
                raise InputError(
                    f"{self.data_dir / TEST_LABELS}: file not found; `test` needs the labels of {TEST_FEATURES} "
                    f"(the course gives none: use `predict` to write the Kaggle CSV)"
                )
            self._loaded["test"] = FrameDataset(*self._labelled(TEST_FEATURES, TEST_LABELS))
        if stage == "predict" and "predict" not in self._loaded:
            self._loaded["predict"] = FrameDataset(self._features(TEST_FEATURES), None)

    def _loader(self, split: str, batch_size: int, shuffle: bool = False) -> DataLoader:
        return DataLoader(
            self._loaded[split],
            batch_size=batch_size,
            shuffle=shuffle,
            collate_fn=keep_batch,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self):
        if len(self._loaded["val"]) == 0:
            return []  # val_ratio 0: no validation
        return self._loader("val", self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", self.eval_batch_size)

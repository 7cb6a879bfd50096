"""The HW2-1 files as a LightningDataModule: which rows train, validate, test and predict, and how they are batched."""

from __future__ import annotations

import warnings
import weakref
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from timit_lit import synthetic as synthetic_data  # (the module: it imports timit_lit.data for the file format)
from timit_lit.data.datasets import FrameDataset, UtteranceDataset, keep_batch
from timit_lit.data.files import (TEST_FEATURES, TEST_LABELS, TRAIN_FEATURES, TRAIN_LABELS, float32_features, load_labels,
                                  open_features)
from timit_lit.data.samplers import LengthBucketedOrder
from timit_lit.data.utterances import ContextWindows, utterance_starts
from timit_lit.errors import InputError


class TimitDataModule(pl.LightningDataModule):
    """The HW2-1 files: ``train_11.npy`` + ``train_label_11.npy`` (fit, validate),
    ``test_11.npy`` (predict) and, where it exists, ``test_label_11.npy`` (test).

    Args:
        data_dir: folder holding the ``*_11.npy`` files.
        batch_size: rows per optimizer step (per process under DDP).
        eval_batch_size: batch size for validate, test and predict (no gradients are kept).
        val_ratio: the fraction of the training rows that validates; 0 trains on
            everything and skips validation.
        split: ``contiguous``: the last ``val_ratio`` of the rows validate, as in the
            notebook (rows are in time order; the cut may fall inside an utterance);
            ``utterance``: whole utterances, recovered from the rows' overlap and drawn
            at random with ``split_seed``, validate, about ``val_ratio`` of the rows.
        split_seed: the seed of the ``utterance`` split (independent of ``seed_everything``).
        context: frames per input row, odd. 11 uses the file's rows as they are; any other
            width rebuilds each row's window from its utterance's frames (edges repeat the
            utterance's first or last frame), so the model's input is ``context * 39``.
        num_classes: number of phone classes; labels must lie in ``0..num_classes-1``.
        num_workers: DataLoader worker processes (0 reads batches in the main process).
        synthetic: if the files are missing, write a synthetic set there first (the demo).
        cache_dir: where float64 feature files are converted to float32 once
            (default: ``float32_cache/`` in ``data_dir``).
        batch_by: ``rows``: batches of ``batch_size`` rows (frames), for frame classifiers;
            ``utterances``: batches of ``batch_size`` whole utterances (``eval_batch_size``
            for evaluation), recovered from the rows' overlap and zero-padded, for
            sequence models such as :class:`timit_lit.models.RecurrentPhoneClassifier`.
        bucket_by_length: with ``batch_by: utterances``, train on batches of utterances of
            similar lengths (:class:`LengthBucketedOrder`) rather than random ones: far less
            padding (measured by ``benchmarks/recurrent.py --data``: docs/sequence-models.md).
            It changes the order of training, so it is off by default.
        features_on_device: copy the features and labels to the accelerator once
            (float32: 2.1 GB for the course's training set) and cut batches there, so
            that only row ids cross to the device per step. On a CPU it changes
            nothing but where batches are cut.
    """

    # Settings a trained model depends on: the CLI takes them from a checkpoint's
    # ``datamodule_hyper_parameters`` whenever it is given one.
    MODEL_DEFINING = ("num_classes", "context", "batch_by")

    def __init__(
        self,
        data_dir: str = "timit_11",
        batch_size: int = 64,
        eval_batch_size: int = 4096,
        val_ratio: float = 0.2,
        split: Literal["contiguous", "utterance"] = "contiguous",
        split_seed: int = 0,
        context: int = 11,
        num_classes: int = 39,
        num_workers: int = 0,
        synthetic: bool = False,
        cache_dir: Optional[str] = None,
        batch_by: Literal["rows", "utterances"] = "rows",
        bucket_by_length: bool = False,
        features_on_device: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()  # into checkpoints, for `predict --ckpt_path` without a config
        if not 0.0 <= val_ratio < 1.0:
            raise InputError(f"val_ratio must be in [0, 1), got {val_ratio}")
        if batch_size < 1 or eval_batch_size < 1:
            raise InputError("batch_size and eval_batch_size must be >= 1")
        if context < 1 or context % 2 == 0:
            raise InputError(f"context must be an odd number of frames, got {context}")
        if batch_by == "utterances" and features_on_device:
            raise InputError("batch_by utterances works with features_on_device false")
        if bucket_by_length and batch_by != "utterances":
            raise InputError("bucket_by_length sorts utterances into batches: it needs batch_by utterances")
        self.data_dir = Path(data_dir)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.val_ratio = val_ratio
        self.split = split
        self.split_seed = split_seed
        self.context = context
        self.num_classes = num_classes
        self.num_workers = num_workers
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.batch_by = batch_by
        self.bucket_by_length = bucket_by_length
        self.features_on_device = features_on_device
        if synthetic and not synthetic_data.has_timit_files(self.data_dir):
            synthetic_data.write_synthetic_timit(self.data_dir)
        # The model's input width comes from the data; reading an .npy header is cheap.
        if not self.data_dir.is_dir():
            raise InputError(f"{self.data_dir}: data folder not found (expected {TRAIN_FEATURES}, {TRAIN_LABELS}, {TEST_FEATURES})")
        first = next((self.data_dir / n for n in (TRAIN_FEATURES, TEST_FEATURES) if (self.data_dir / n).exists()), None)
        if first is None:
            raise InputError(f"{self.data_dir}: neither {TRAIN_FEATURES} nor {TEST_FEATURES} is there")
        width = int(open_features(first).shape[1])
        if context != 11 and width % 11:
            raise InputError(f"{first}: rows of {width} features are not 11 spliced frames; context {context} needs them")
        self.file_width = width
        self.input_dim = width if context == 11 else context * width // 11
        self._loaded: dict[str, FrameDataset] = {}
        self._on_device: dict[str, tuple[torch.Tensor, Optional[torch.Tensor]]] = {}
        # Each file's memory map while a dataset or a caller holds it, and no longer: a map's
        # pages, once read (the finiteness check reads them all), count in this process's
        # resident memory for as long as the map lives, and ContextWindows copies out what it uses.
        self._maps: weakref.WeakValueDictionary[str, np.memmap] = weakref.WeakValueDictionary()
        self._starts: dict[str, np.ndarray] = {}

    def utterance_starts(self, name: str) -> np.ndarray:
        """Where the utterances of the feature file ``name`` (e.g. ``test_11.npy``) start, recovered
        from its rows once (:func:`timit_lit.data.utterances.utterance_starts`) and kept: the
        datasets, the decoder and the CSV writer all ask here."""
        if name not in self._starts:
            self._starts[name] = utterance_starts(self._features(name))
        return self._starts[name]

    def _features(self, name: str) -> np.ndarray:
        """The float32 memory map of the feature file ``name``, checked when mapped; one map per
        file while anything holds it (see ``_maps``)."""
        features = self._maps.get(name)
        if features is not None:
            return features
        path = self.data_dir / name
        width = open_features(path).shape[1]
        if width != self.file_width:
            raise InputError(
                f"{path}: rows have {width} features, but the data's width is {self.file_width} "
                f"(train and test files must match)"
            )
        features = self._maps[name] = float32_features(path, self.cache_dir)
        return features

    def _labelled(self, features_name: str, labels_name: str) -> tuple[np.ndarray, np.ndarray]:
        features = self._features(features_name)
        labels = load_labels(self.data_dir / labels_name, len(features), self.num_classes, self.data_dir / features_name)
        return features, labels

    def prepare_data(self) -> None:
        """Convert float64 features to float32 once per node (Lightning runs this on local rank 0 only)."""
        fn = self.trainer.state.fn if self.trainer else None
        for name in (TRAIN_FEATURES,) if fn in ("fit", "validate") else (TEST_FEATURES,):
            path = self.data_dir / name
            if path.is_file() and open_features(path).dtype != np.float32:
                self._features(name)

    def setup(self, stage: str) -> None:
        if stage in ("fit", "validate") and "train" not in self._loaded:
            features, labels = self._labelled(TRAIN_FEATURES, TRAIN_LABELS)
            needs_starts = self.split == "utterance" or self.context != 11 or self.batch_by == "utterances"
            starts = self.utterance_starts(TRAIN_FEATURES) if needs_starts else None
            train_rows, val_rows = self._split(len(features), starts)
            source = features if self.context == 11 else ContextWindows(features, self.context, starts)
            self._loaded["train"] = self._dataset("train", source, starts, labels, train_rows)
            self._loaded["val"] = self._dataset("train", source, starts, labels, val_rows)
        if stage == "test" and "test" not in self._loaded:
            if not (self.data_dir / TEST_LABELS).is_file():
                raise InputError(
                    f"{self.data_dir / TEST_LABELS}: file not found; `test` needs the labels of {TEST_FEATURES} "
                    f"(the course gives none: use `predict` to write the Kaggle CSV)"
                )
            features, labels = self._labelled(TEST_FEATURES, TEST_LABELS)
            self._loaded["test"] = self._dataset("test", *self._windows(TEST_FEATURES, features), labels)
        if stage == "predict" and "predict" not in self._loaded:
            self._loaded["predict"] = self._dataset("predict", *self._windows(TEST_FEATURES, self._features(TEST_FEATURES)), None)

    def _windows(self, name: str, features: np.ndarray):
        """The input rows of a whole file, and its utterances' starts where anything needs them."""
        starts = self.utterance_starts(name) if self.context != 11 or self.batch_by == "utterances" else None
        return features if self.context == 11 else ContextWindows(features, self.context, starts), starts

    def _split(self, n_rows: int, starts: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Training and validation row ids."""
        if self.split == "contiguous":
            n_train = int(n_rows * (1 - self.val_ratio))  # the notebook's rounding
            return np.arange(n_train), np.arange(n_train, n_rows)
        lengths = np.diff(starts)
        order = np.random.default_rng(self.split_seed).permutation(len(lengths))
        # Utterances in a random order until they hold val_ratio of the rows.
        n_val = int(np.searchsorted(np.cumsum(lengths[order]), self.val_ratio * n_rows)) + 1 if self.val_ratio else 0
        is_val = np.zeros(len(lengths), dtype=bool)
        is_val[order[:n_val]] = True
        in_val = np.repeat(is_val, lengths)
        return np.flatnonzero(~in_val), np.flatnonzero(in_val)

    def _dataset(self, file: str, features, starts: Optional[np.ndarray], labels: Optional[np.ndarray],
                 rows: Optional[np.ndarray] = None):
        """A dataset over ``features`` (all rows, or ``rows``): utterances or rows, as ``batch_by``
        says; with ``features_on_device`` on an accelerator, the file is copied there once
        and the dataset serves row ids. Each dataset names its feature file (``dataset.file``),
        so that what needs its utterances asks :meth:`utterance_starts`."""
        dataset = self._rows_or_utterances(file, features, starts, labels, rows)
        dataset.file = TRAIN_FEATURES if file == "train" else TEST_FEATURES
        return dataset

    def _rows_or_utterances(self, file: str, features, starts: Optional[np.ndarray], labels: Optional[np.ndarray],
                            rows: Optional[np.ndarray]):
        if self.batch_by == "utterances":
            return UtteranceDataset(features, labels, np.arange(len(features)) if rows is None else rows, starts)
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        on_device = self.features_on_device
        if on_device and file not in self._on_device:  # (on a CPU this keeps the memory map as it is)
            with warnings.catch_warnings():  # the map is read-only, and so are the tensors read from it
                warnings.filterwarnings("ignore", message=".*not writable.*")
                self._on_device[file] = (
                    torch.from_numpy(features).to(device) if isinstance(features, np.ndarray) else features.to(device),
                    torch.from_numpy(labels).to(device) if labels is not None else None,
                )
        return FrameDataset(features, labels, rows, ids_only=on_device)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """On the device: cut batches from the resident features, and split a training batch
        into the model's ``steps_per_call`` optimizer batches."""
        if self._on_device:
            stage = self.trainer.state.stage
            file = "test" if stage == "test" else "predict" if stage == "predict" else "train"
            features, labels = self._on_device[file]
            batch = (features[batch], labels[batch] if labels is not None else batch)
        if self.trainer.training and self._steps_per_call() > 1:
            x, y = batch
            return list(zip(x.split(self.batch_size), y.split(self.batch_size)))
        return batch

    def _steps_per_call(self) -> int:
        """Optimizer steps the model takes per training batch (:attr:`PhoneModel.steps_per_call
        <timit_lit.models.PhoneModel.steps_per_call>`, decided by the model when the fit starts)."""
        return getattr(self.trainer.lightning_module, "steps_per_call", 1) if self.trainer else 1

    def _loader(self, split: str, batch_size: int, shuffle: bool = False) -> DataLoader:
        dataset = self._loaded[split]
        sampler = None
        if shuffle and self.bucket_by_length:
            sampler, shuffle = LengthBucketedOrder(np.diff(dataset.offsets), batch_size), False
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            collate_fn=keep_batch,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            # Pinned on a CUDA device: batches (or, with features_on_device, row ids) cross without a host sync.
            pin_memory=self.trainer is not None and self.trainer.strategy.root_device.type == "cuda",
        )

    def train_dataloader(self) -> DataLoader:
        # The model's steps_per_call batches of the one shuffled order, back to back: the same
        # batches, in the same order, as batch_size alone.
        return self._loader("train", self.batch_size * self._steps_per_call(), shuffle=True)

    def val_dataloader(self):
        if len(self._loaded["val"]) == 0:
            return []  # val_ratio 0: no validation
        return self._loader("val", self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", self.eval_batch_size)

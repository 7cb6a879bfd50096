"""The HW2-1 files as a LightningDataModule: which rows train, validate, test and predict, and how they are batched."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader

from timit_lit.data import synthetic as synthetic_data
from timit_lit.data.datasets import TAUGHT, UNLABELLED, FrameDataset, UtteranceDataset, keep_batch
from timit_lit.data.device_batches import FeaturesOnDevice, optimizer_batches
from timit_lit.data.files import TEST_FEATURES, TEST_LABELS, TRAIN_FEATURES, TRAIN_LABELS, report
from timit_lit.data.folder import DataFolder
from timit_lit.data.row_links import Utterances
from timit_lit.data.row_space import RowSpace
from timit_lit.data.samplers import LengthBucketedOrder
from timit_lit.data.splits import split_rows
from timit_lit.data.teacher import teachers_by_row_id
from timit_lit.data.utterances import ContextWindows
from timit_lit.errors import InputError


class TimitDataModule(pl.LightningDataModule):
    """The HW2-1 files: ``train_11.npy`` + ``train_label_11.npy`` (fit, validate),
    ``test_11.npy`` (predict) and, where it exists, ``test_label_11.npy`` (test).

    ``setup`` builds each stage's :class:`~timit_lit.data.row_space.RowSpace` (what its row
    ids are) and its datasets, which carry it (``dataset.row_space``).

    Args:
        data_dir: folder holding the ``*_11.npy`` files.
        batch_size: rows per optimizer step (per process under DDP).
        eval_batch_size: batch size for validate, test and predict (no gradients are kept).
        val_ratio: the fraction of the training rows that validates; 0 trains on
            everything and skips validation.
        split: ``contiguous``: the last ``val_ratio`` of the rows validate, as in the
            notebook (rows are in time order; the cut may fall inside an utterance);
            ``utterance``: whole utterances, recovered from the rows' overlap and drawn
            at random with ``split_seed``, validate, about ``val_ratio`` of the rows;
            ``labels``: the *labels* of ``val_ratio`` of the training rows, drawn at random
            with ``split_seed``, validate, while their features stay in the training
            utterances (as MLE-bench's test rows sit inside its training utterances:
            docs/mlebench.md). With ``batch_by: utterances`` both splits serve whole
            utterances, each scoring its own labels.
        split_seed: the seed of the ``utterance`` and ``labels`` splits (independent of ``seed_everything``).
        context: frames per input row, odd. 11 uses the file's rows as they are; any other
            width rebuilds each row's window from its utterance's frames (edges repeat the
            utterance's first or last frame), so the model's input is ``context * 39``.
        num_classes: number of phone classes; labels must lie in ``0..num_classes-1``.
        num_workers: DataLoader worker processes (0 reads batches in the main process).
        synthetic: generated data on purpose (the demo): if the files are missing, write a
            generated set there first (:mod:`timit_lit.synthetic`; only into a missing or empty
            folder, or one it generated). A run on generated data says so; one with
            ``synthetic`` false warns.
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
            (float32: docs/speed.md has the course's sizes) and cut batches there, so
            that only row ids cross to the device per step. On a CPU it changes
            nothing but where batches are cut.
        soft_targets: a ``.npy`` of a teacher's class posteriors for every row of
            ``train_11.npy``, in its order (``predict --data.predict_file train_11.npy
            --prediction.posteriors_path``), served beside the labels of the training
            utterances for a student to learn from (``model.distillation_weight``;
            ``batch_by: utterances``). Validation never sees them.
        test_targets: a ``.npy`` of a teacher's class posteriors for every row of
            ``test_11.npy``, in its order (``predict --prediction.posteriors_path``): fit
            serves the test file's utterances beside the training ones, their frames learning
            the teacher's posteriors in place of labels, each frame weighing as a labelled
            one. The result has learned from the test features: it is transductive
            (docs/results.md). ``batch_by: utterances``.
        test_targets_as: ``posteriors``: the teacher's distribution; ``labels``: its most
            likely class, as a hard pseudo-label.
        test_targets_confidence: only the test rows whose most likely class has at least this
            posterior learn (0: every one); the others stay in the input, learning nothing.
        predict_file: the file ``predict`` writes predictions for: ``test_11.npy`` (the
            submission), or ``train_11.npy`` (its rows' posteriors, a teacher's soft targets),
            ``Id`` being the row of that file.
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
        split: Literal["contiguous", "utterance", "labels"] = "contiguous",
        split_seed: int = 0,
        context: int = 11,
        num_classes: int = 39,
        num_workers: int = 0,
        synthetic: bool = False,
        cache_dir: Optional[str] = None,
        batch_by: Literal["rows", "utterances"] = "rows",
        bucket_by_length: bool = False,
        features_on_device: bool = False,
        soft_targets: Optional[str] = None,
        test_targets: Optional[str] = None,
        test_targets_as: Literal["posteriors", "labels"] = "posteriors",
        test_targets_confidence: float = 0.0,
        predict_file: Literal["test_11.npy", "train_11.npy"] = "test_11.npy",
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
        if soft_targets and batch_by != "utterances":
            raise InputError("data.soft_targets serves a teacher's posteriors with utterances: it needs batch_by utterances")
        if test_targets and batch_by != "utterances":
            raise InputError("data.test_targets serves the test utterances with a teacher's posteriors: it needs "
                             "batch_by utterances")
        if not 0.0 <= test_targets_confidence <= 1.0:
            raise InputError(f"data.test_targets_confidence must be in [0, 1], got {test_targets_confidence}")
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
        self.soft_targets = soft_targets
        self.test_targets, self.test_targets_as = test_targets, test_targets_as
        self.test_targets_confidence = test_targets_confidence
        self.predict_file = predict_file
        self.features_on_device = features_on_device
        if synthetic and not synthetic_data.has_timit_files(self.data_dir):
            if rank_zero_only.rank == 0:
                report(f"{self.data_dir}: writing a generated TIMIT-shaped set there (data.synthetic true)")
            synthetic_data.write_synthetic_timit(self.data_dir)
        if rank_zero_only.rank == 0:
            synthetic_data.say_if_generated(self.data_dir, synthetic)
        self.folder = DataFolder(self.data_dir, num_classes, self.cache_dir)
        # The model's input width comes from the data.
        width = self.folder.width
        if context != 11 and width % 11:
            raise InputError(f"{self.folder.first_file}: rows of {width} features are not 11 spliced frames; context "
                             f"{context} needs them")
        self.file_width = width
        self.input_dim = width if context == 11 else context * width // 11
        self._loaded: dict[str, FrameDataset] = {}
        self._on_device = FeaturesOnDevice()

    # The files

    def feature_files(self) -> list[str]:
        """The feature files of the folder, in the order their rows are numbered together."""
        return self.folder.feature_files()

    def training_labels(self) -> np.ndarray:
        """The training file's labels, every row, in the file's order (read and checked)."""
        return self.folder.labels(TRAIN_FEATURES, TRAIN_LABELS)

    def prepare_data(self) -> None:
        """Convert float64 features to float32 once per node (Lightning runs this on local rank 0 only)."""
        fn = self.trainer.state.fn if self.trainer else None
        names = [TRAIN_FEATURES] if fn in ("fit", "validate") else [self.predict_file if fn == "predict" else TEST_FEATURES]
        if self._needs_utterances(fn in ("fit", "validate")):
            names = self.feature_files()  # utterances are recovered across every file
        for name in names:
            self.folder.convert(name)

    # The rows' utterances and row spaces

    def utterances(self) -> Utterances:
        """The utterances of all the folder's rows (:meth:`DataFolder.utterances`)."""
        return self.folder.utterances()

    def _needs_utterances(self, fitting: bool) -> Optional[str]:
        """The option that makes this run read the rows' utterances, if any."""
        if self.batch_by == "utterances":
            return "data.batch_by utterances"
        if self.context != 11:
            return f"data.context {self.context}"
        if fitting and self.split == "utterance":
            return "data.split utterance"
        return None

    def file_row_space(self, file: str) -> RowSpace:
        """The rows of ``file`` in its own order (their utterances recovered when first asked)."""
        return self.folder.row_space(file)[0]

    def _row_space(self, file: str, needed_by: Optional[str], all_files: bool = False) -> tuple[RowSpace, object]:
        space, features = self.folder.row_space(file, needed_by, all_files)
        if space.in_utterance_order and self.features_on_device:
            raise InputError("data.features_on_device needs rows in time order; this folder's utterances are "
                             "recovered across re-ordered rows")
        return space, features

    # The splits' datasets

    def setup(self, stage: str) -> None:
        if stage in ("fit", "validate") and "train" not in self._loaded:
            self._setup_fit()
        if stage == "test" and "test" not in self._loaded:
            if not (self.data_dir / TEST_LABELS).is_file():
                raise InputError(
                    f"{self.data_dir / TEST_LABELS}: file not found; `test` needs the labels of {TEST_FEATURES} "
                    f"(the course gives none: use `predict` to write the Kaggle CSV)"
                )
            self._setup_evaluation("test", with_labels=True)
        if stage == "predict" and "predict" not in self._loaded:
            self._setup_evaluation("predict", with_labels=False)

    def _setup_fit(self) -> None:
        needed_by = self._needs_utterances(fitting=True)
        if self.test_targets and not (self.data_dir / TEST_FEATURES).is_file():
            raise InputError(f"{self.data_dir / TEST_FEATURES}: file not found; data.test_targets teaches its utterances")
        # With test targets the ids number the test file's rows too (after the training file's, for the course's files).
        space, features = self._row_space(TRAIN_FEATURES, needed_by, all_files=bool(self.test_targets))
        labels = space.by_row_id(TRAIN_FEATURES, self.training_labels(), -1)
        train, val = split_rows(self.split, labels, self.val_ratio, self.split_seed, space)
        # Validation may take the labels of the rows that train as given.
        space = dataclasses.replace(space, given_labels=np.where(train, labels, -1))
        teacher, taught = teachers_by_row_id(self.folder, space, self.soft_targets, self.test_targets,
                                             self.test_targets_as, self.test_targets_confidence)
        if taught is not None:
            # Not the test rows inside validation utterances (MLE-bench's): those stay unseen.
            taught &= ~np.isin(space.utterance, space.utterance[val])
            labels = np.where(taught, TAUGHT, labels)
            train = train | taught  # served with their utterances, carrying TAUGHT
        source = self._source(space, features)
        self._loaded["train"] = self._dataset("train", space, source, train, labels, teacher)
        self._loaded["val"] = self._dataset("train", space, source, val, labels)

    def _setup_evaluation(self, split: str, with_labels: bool) -> None:
        """The ``test`` or ``predict`` dataset: every row of the test file (for ``predict``,
        of ``predict_file``) scored (predicted), in its utterances' context where the run
        reads utterances."""
        file = self.predict_file if split == "predict" else TEST_FEATURES
        space, features = self._row_space(file, self._needs_utterances(fitting=False))
        scored = np.zeros(space.n_rows, dtype=bool)
        scored[space.positions(file)] = True
        labels = space.by_row_id(TEST_FEATURES, self.folder.labels(TEST_FEATURES, TEST_LABELS), -1) if with_labels else None
        # The training labels may be taken as known when decoding test rows, never the predicted rows' own.
        if space.in_utterance_order and file == TEST_FEATURES and (self.data_dir / TRAIN_LABELS).is_file():
            space = dataclasses.replace(space, given_labels=space.by_row_id(TRAIN_FEATURES, self.training_labels(), -1))
        self._loaded[split] = self._dataset(split, space, self._source(space, features), scored, labels)

    def _source(self, space: RowSpace, features):
        """What the datasets read by row id: the rows as they are, or windows of ``context`` frames rebuilt."""
        return features if self.context == 11 else ContextWindows(features, self.context, space.starts)

    def _dataset(self, key: str, space: RowSpace, features, scored: np.ndarray, labels: Optional[np.ndarray],
                 teacher: Optional[np.ndarray] = None):
        """A dataset of the rows ``scored`` (a mask over ``space``'s row ids), each with its
        label (from ``labels``; row ids where None, in ``predict``): rows, or utterances, as
        ``batch_by`` says. Utterances are served whole, unscored rows (test rows, held-out
        labels) carrying :data:`UNLABELLED`, where other rows share them (``split: labels``, or
        all files' rows in utterance order); as the scored rows' stretches otherwise. With
        ``features_on_device`` on an accelerator, the features are copied there once and the
        dataset serves row ids. Test rows that a fit learns (``data.test_targets``) are scored
        rows whose label is :data:`TAUGHT`."""
        rows = np.flatnonzero(scored)
        if self.batch_by == "utterances":
            if space.in_utterance_order or self.split == "labels":
                rows = np.flatnonzero(np.isin(space.utterance, space.utterance[rows]))
            if labels is not None:
                labels = np.where(scored, labels, UNLABELLED)
            return UtteranceDataset(features, labels, rows, space, teacher)
        if self.features_on_device:  # (on a CPU this keeps the memory map as it is)
            device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
            self._on_device.add(key, features, labels, device)
        return FrameDataset(features, labels, rows, ids_only=self.features_on_device, row_space=space)

    def dataset(self, split: str):
        """The dataset of ``split`` (``train``, ``val``, ``test``, ``predict``) once set up:
        its ``rows`` (ids in its ``row_space``, in the order served), ``labels`` (by row id,
        negative where ``split`` scores none) and ``features``."""
        if split not in self._loaded:
            raise KeyError(f"the {split} split is not set up (setup() for its stage first)")
        return self._loaded[split]

    # The loaders

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """On the device: cut batches from the resident features, and split a training batch
        into the model's ``steps_per_call`` optimizer batches."""
        if self._on_device:
            stage = self.trainer.state.stage
            batch = self._on_device.batch("test" if stage == "test" else "predict" if stage == "predict" else "train", batch)
        if self.trainer.training and self._steps_per_call() > 1:
            return optimizer_batches(batch, self.batch_size)
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

"""The HW2-1 files as a LightningDataModule: which rows train, validate, test and predict, and how they are batched."""

from __future__ import annotations

import warnings
import weakref
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader

from timit_lit import synthetic as synthetic_data  # (the module: it imports timit_lit.data for the file format)
from timit_lit.data.datasets import UNLABELLED, FrameDataset, UtteranceDataset, keep_batch
from timit_lit.data.files import (TEST_FEATURES, TEST_LABELS, TRAIN_FEATURES, TRAIN_LABELS, float32_features, load_labels,
                                  open_features, report)
from timit_lit.data.samplers import LengthBucketedOrder
from timit_lit.data.utterances import ContextWindows, RowsInUtteranceOrder, Utterances, recover_utterances, segment_offsets
from timit_lit.errors import InputError

# The row space of a folder whose utterances are not runs of one file's rows (MLE-bench's
# shuffled split): all files' rows in utterance order (timit_lit.data.utterances.RowsInUtteranceOrder).
RECOVERED = "utterance order"
# Below this mean length (rows per recovered utterance) the rows form no utterances to speak of.
MIN_MEAN_UTTERANCE = 3.0


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
            (float32: 2.1 GB for the course's training set) and cut batches there, so
            that only row ids cross to the device per step. On a CPU it changes
            nothing but where batches are cut.
        soft_targets: a ``.npy`` of a teacher's class posteriors for every row of
            ``train_11.npy``, in its order (``predict --data.predict_file train_11.npy
            --prediction.posteriors_path``), served beside the labels of the training
            utterances for a student to learn from (``model.distillation_weight``;
            ``batch_by: utterances``). Validation never sees them.
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
        self.predict_file = predict_file
        self.features_on_device = features_on_device
        if synthetic and not synthetic_data.has_timit_files(self.data_dir):
            if rank_zero_only.rank == 0:
                report(f"{self.data_dir}: writing a generated TIMIT-shaped set there (data.synthetic true)")
            synthetic_data.write_synthetic_timit(self.data_dir)
        self._say_if_generated(synthetic)
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
        self._utterances: Optional[Utterances] = None
        self._known: dict[str, np.ndarray] = {}  # split: labels decoding may take as given (timit_lit.decoding)

    def _say_if_generated(self, synthetic: bool) -> None:
        """Generated data never passes for speech: a run on it says so, and warns where its
        config is one for real data (data.synthetic false)."""
        generated = synthetic_data.generated_files(self.data_dir)
        if not generated or rank_zero_only.rank != 0:
            return
        what = f"{', '.join(generated)} written by timit_lit.synthetic ({synthetic_data.MARKER})"
        if synthetic:
            report(f"{self.data_dir}: generated data, not speech: {what}")
        else:
            warnings.warn(f"{self.data_dir} holds GENERATED data, not TIMIT speech: {what}. What this run measures "
                          f"says nothing about speech. The course's files: README, 'The course data'; generated data "
                          f"on purpose: --data.synthetic true", UserWarning, stacklevel=2)

    def feature_files(self) -> list[str]:
        """The feature files of the folder, in the order their rows are numbered together."""
        return [name for name in (TRAIN_FEATURES, TEST_FEATURES) if (self.data_dir / name).is_file()]

    def utterances(self) -> Utterances:
        """The utterances of every feature file of the folder together
        (:func:`timit_lit.data.utterances.recover_utterances`: rows in any order, an utterance's
        rows possibly in several files), recovered once, said in one line on stderr, and kept."""
        if self._utterances is None:
            files = self.feature_files()
            self._utterances = recover_utterances([self._features(name) for name in files])
            if rank_zero_only.rank == 0:
                report(self._describe(files, self._utterances))
        return self._utterances

    def _describe(self, files: list[str], found: Utterances) -> str:
        sizes = ", ".join(f"{name} {n:,}" for name, n in zip(files, np.diff(found.file_starts)))
        line = (f"{self.data_dir}: {len(files)} files ({sizes} rows): {len(found):,} utterances "
                f"(mean {len(found.order) / max(len(found), 1):.1f} rows), ")
        if found.in_file_order:
            return line + "rows in time order"
        line += "rows re-ordered into utterances"
        if TEST_FEATURES in files and TRAIN_FEATURES in files:
            line += f"; {self.test_rows_among_training():,} test rows sit inside training utterances"
        return line

    def test_rows_among_training(self) -> int:
        """How many test rows share an utterance with training rows."""
        found = self.utterances()
        files = self.feature_files()
        if files != [TRAIN_FEATURES, TEST_FEATURES]:
            return 0
        utterance = found.utterance_of()
        n_train = int(found.file_starts[1])
        has_training = np.zeros(len(found), dtype=bool)
        has_training[utterance[:n_train]] = True
        return int(has_training[utterance[n_train:]].sum())

    def require_utterances(self, needed_by: str) -> None:
        """Stop (InputError) where ``needed_by`` needs utterances and the rows form none."""
        found = self.utterances()
        mean = len(found.order) / max(len(found), 1)
        if mean < MIN_MEAN_UTTERANCE:
            raise InputError(f"{self.data_dir}: {needed_by} needs utterances, but its rows form none: {len(found):,} "
                             f"'utterances' of {mean:.1f} rows on average among {len(found.order):,} rows (no row's last "
                             f"10 frames are another's first 10)")

    @property
    def reordered(self) -> bool:
        """Whether the folder's utterances are not runs of one file's rows: its rows are then
        served in utterance order across files (the row space :data:`RECOVERED`)."""
        return not self.utterances().in_file_order

    def utterance_starts(self, name: str) -> np.ndarray:
        """Where the utterances of the row space ``name`` start: a feature file (e.g.
        ``test_11.npy``) whose rows are in time order, or :data:`RECOVERED` (all files'
        rows in utterance order), from :meth:`utterances`. The datasets, the decoder and the
        CSV writer all ask here, with the ``file`` their dataset names."""
        if name not in self._starts:
            found = self.utterances()
            if name == RECOVERED:
                self._starts[name] = found.offsets
            else:
                if not found.in_file_order:
                    raise InputError(f"{self.data_dir / name}: its rows are not in time order; its utterances exist "
                                     f"only in the row space {RECOVERED!r}")
                f = self.feature_files().index(name)
                first, stop = found.file_starts[f], found.file_starts[f + 1]
                inside = found.offsets[(found.offsets >= first) & (found.offsets <= stop)]
                self._starts[name] = (inside - first).astype(np.int64)
        return self._starts[name]

    def dataset(self, split: str):
        """The dataset of ``split`` (``train``, ``val``, ``test``, ``predict``) once set up:
        its ``rows`` (ids in the row space ``file``, in the order served), ``labels`` (by
        row id, negative where ``split`` scores none) and ``features``."""
        if split not in self._loaded:
            raise KeyError(f"the {split} split is not set up (setup() for its stage first)")
        return self._loaded[split]

    def labelled_segments(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The labels ``split`` scores, in utterance order, and the offsets of their segments:
        cut at utterance edges and wherever rows are missing (the split's cuts, unscored
        rows), so that consecutive labels in a segment are consecutive frames."""
        dataset = self.dataset(split)
        rows = dataset.rows.numpy()
        rows = rows[dataset.labels[rows] >= 0]
        labels, space = dataset.labels[rows], dataset.file
        if space != RECOVERED and self.reordered:  # rows of one file, whose utterances span re-ordered files
            rows = self._positions(RECOVERED, space)[rows]
            order = np.argsort(rows)
            rows, labels, space = rows[order], labels[order], RECOVERED
        return labels, segment_offsets(rows, self.utterance_starts(space))

    def known_labels(self, split: str) -> Optional[np.ndarray]:
        """The labels, over the row space of ``split``'s dataset (-1 where unknown), that
        were given for training and so may be taken as known when ``split`` is decoded:
        for ``val``, those of the rows that train; for ``test`` and ``predict``, every
        training row's. None where no given label shares that row space."""
        return self._known.get(split)

    def file_row_ids(self, name: str, rows: np.ndarray, file: str = TEST_FEATURES) -> np.ndarray:
        """The row of ``file`` of each of ``rows`` (ids in the row space ``name``), -1 for a row of another file."""
        rows = np.asarray(rows, dtype=np.int64)
        if name == file:
            return rows
        found = self.utterances()
        f = self.feature_files().index(file)
        combined = found.order[rows]
        first, stop = found.file_starts[f], found.file_starts[f + 1]
        return np.where((combined >= first) & (combined < stop), combined - first, -1)

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

    def training_labels(self) -> np.ndarray:
        """The training file's labels, every row, in the file's order (read and checked)."""
        return self._labelled(TRAIN_FEATURES, TRAIN_LABELS)[1]

    def _labelled(self, features_name: str, labels_name: str) -> tuple[np.ndarray, np.ndarray]:
        features = self._features(features_name)
        labels = load_labels(self.data_dir / labels_name, len(features), self.num_classes, self.data_dir / features_name)
        return features, labels

    def prepare_data(self) -> None:
        """Convert float64 features to float32 once per node (Lightning runs this on local rank 0 only)."""
        fn = self.trainer.state.fn if self.trainer else None
        names = [TRAIN_FEATURES] if fn in ("fit", "validate") else [self.predict_file if fn == "predict" else TEST_FEATURES]
        if self._needs_utterances(fn in ("fit", "validate")):
            names = self.feature_files()  # utterances are recovered across every file
        for name in names:
            path = self.data_dir / name
            if path.is_file() and open_features(path).dtype != np.float32:
                self._features(name)

    def _needs_utterances(self, fitting: bool) -> Optional[str]:
        """The option that makes this run read the rows' utterances, if any."""
        if self.batch_by == "utterances":
            return "data.batch_by utterances"
        if self.context != 11:
            return f"data.context {self.context}"
        if fitting and self.split == "utterance":
            return "data.split utterance"
        return None

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
        if needed_by:
            self.require_utterances(needed_by)
        space, features, starts = self._space(TRAIN_FEATURES, needed_by is not None)
        labels = np.full(len(features), -1, dtype=np.int64)
        labels[self._positions(space, TRAIN_FEATURES)] = self._labelled(TRAIN_FEATURES, TRAIN_LABELS)[1]
        train, val = self._split(space, labels, starts)
        source = features if self.context == 11 else ContextWindows(features, self.context, starts)
        self._known["val"] = np.where(train, labels, -1)
        teacher = self._teacher(space, len(features)) if self.soft_targets else None
        self._loaded["train"] = self._dataset("train", space, source, starts, train, labels, teacher)
        self._loaded["val"] = self._dataset("train", space, source, starts, val, labels)

    def _setup_evaluation(self, split: str, with_labels: bool) -> None:
        """The ``test`` or ``predict`` dataset: every row of the test file (for ``predict``,
        of ``predict_file``) scored (predicted), in its utterances' context where the run
        reads utterances."""
        file = self.predict_file if split == "predict" else TEST_FEATURES
        needed_by = self._needs_utterances(fitting=False)
        if needed_by:
            self.require_utterances(needed_by)
        space, features, starts = self._space(file, needed_by is not None)
        scored = np.zeros(len(features), dtype=bool)
        scored[self._positions(space, file)] = True
        labels = None
        if with_labels:
            labels = np.full(len(features), -1, dtype=np.int64)
            labels[self._positions(space, TEST_FEATURES)] = self._labelled(TEST_FEATURES, TEST_LABELS)[1]
        # The training labels may be taken as known when decoding test rows, never the predicted rows' own.
        if space == RECOVERED and file == TEST_FEATURES and (self.data_dir / TRAIN_LABELS).is_file():
            known = np.full(len(features), -1, dtype=np.int64)
            known[self._positions(space, TRAIN_FEATURES)] = self._labelled(TRAIN_FEATURES, TRAIN_LABELS)[1]
            self._known[split] = known
        source = features if self.context == 11 else ContextWindows(features, self.context, starts)
        self._loaded[split] = self._dataset(split, space, source, starts, scored, labels)

    def _teacher(self, space: str, n_space: int) -> np.ndarray:
        """``soft_targets``' posteriors, checked (one distribution per row of the training
        file), by row id of the row space ``space`` (``n_space`` rows; zeros for rows of other files)."""
        path = Path(self.soft_targets)
        n_rows = len(self._features(TRAIN_FEATURES))
        try:
            posteriors = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as error:
            raise InputError(f"{path}: data.soft_targets is not a readable .npy array ({error})") from None
        if posteriors.shape != (n_rows, self.num_classes) or posteriors.dtype.kind != "f":
            raise InputError(f"{path}: a {posteriors.dtype} array of shape {posteriors.shape}; data.soft_targets needs "
                             f"{self.num_classes} class posteriors (floats) for each of the {n_rows:,} rows of "
                             f"{TRAIN_FEATURES}, in its order")
        chunk_rows = 1 << 16
        for start in range(0, n_rows, chunk_rows):
            chunk = np.asarray(posteriors[start : start + chunk_rows], dtype=np.float32)
            wrong = ~np.isfinite(chunk).all(axis=1) | (chunk < 0).any(axis=1) | (np.abs(chunk.sum(axis=1) - 1) > 1e-2)
            if wrong.any():
                raise InputError(f"{path}: row {start + int(np.flatnonzero(wrong)[0])} is not a distribution over the "
                                 f"classes (values >= 0 that sum to 1)")
        if space == TRAIN_FEATURES:
            return posteriors
        placed = np.zeros((n_space, self.num_classes), dtype=np.float32)
        placed[self._positions(space, TRAIN_FEATURES)] = posteriors
        return placed

    def _space(self, file: str, uses_utterances: bool):
        """``(name, features, starts)`` of the rows a split reads: the file itself, or, where the
        run reads utterances and the folder's rows are not in time order, all files' rows in
        utterance order (:data:`RECOVERED`). ``starts`` only where utterances are read."""
        if uses_utterances and self.reordered:
            if self.features_on_device:
                raise InputError("data.features_on_device needs rows in time order; this folder's utterances are "
                                 "recovered across re-ordered rows")
            found = self.utterances()
            features = RowsInUtteranceOrder([self._features(name) for name in self.feature_files()], found)
            return RECOVERED, features, found.offsets
        return file, self._features(file), self.utterance_starts(file) if uses_utterances else None

    def _positions(self, space: str, file: str) -> np.ndarray:
        """Where each row of ``file`` sits in the row space ``space``."""
        if space == file:
            return np.arange(len(self._features(file)))
        found = self.utterances()
        position = np.empty(len(found.order), dtype=np.int64)
        position[found.order] = np.arange(len(found.order))
        f = self.feature_files().index(file)
        return position[found.file_starts[f] : found.file_starts[f + 1]]

    def _split(self, space: str, labels: np.ndarray, starts: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Which labelled rows of the space train and which validate (two boolean masks)."""
        labelled = labels >= 0
        n_labelled = int(labelled.sum())
        if self.split == "contiguous":
            if space == RECOVERED:
                raise InputError(f"{self.data_dir}: data.split contiguous needs rows in time order; these were re-ordered "
                                 f"into utterances: use data.split labels (or utterance)")
            in_val = np.arange(len(labels)) >= int(n_labelled * (1 - self.val_ratio))  # the notebook's rounding
        elif self.split == "labels":
            rows = np.flatnonzero(labelled)
            chosen = np.random.default_rng(self.split_seed).permutation(len(rows))[: int(round(self.val_ratio * len(rows)))]
            in_val = np.zeros(len(labels), dtype=bool)
            in_val[rows[chosen]] = True
        else:
            utterance = np.repeat(np.arange(len(starts) - 1), np.diff(starts))
            lengths = np.bincount(utterance[labelled], minlength=len(starts) - 1)
            order = np.random.default_rng(self.split_seed).permutation(len(lengths))
            # Utterances in a random order until they hold val_ratio of the labelled rows.
            n_val = int(np.searchsorted(np.cumsum(lengths[order]), self.val_ratio * n_labelled)) + 1 if self.val_ratio else 0
            is_val = np.zeros(len(lengths), dtype=bool)
            is_val[order[:n_val]] = True
            in_val = is_val[utterance]
        return labelled & ~in_val, labelled & in_val

    def _dataset(self, key: str, space: str, features, starts: Optional[np.ndarray], scored: np.ndarray,
                 labels: Optional[np.ndarray], teacher: Optional[np.ndarray] = None):
        """A dataset of the rows ``scored`` (a mask over the row space ``space``), each with
        its label (from ``labels``; row ids where None, in ``predict``): rows, or utterances, as
        ``batch_by`` says. Utterances are served whole, unscored rows (test rows, held-out
        labels) carrying :data:`UNLABELLED`, where other rows share them (``split: labels``, or a
        re-ordered folder); as the scored rows' stretches otherwise. Each dataset names its
        row space (``dataset.file``), so that what needs its utterances asks
        :meth:`utterance_starts`; with ``features_on_device`` on an accelerator, the file
        is copied there once and the dataset serves row ids."""
        rows = np.flatnonzero(scored)
        if self.batch_by == "utterances":
            if space == RECOVERED or self.split == "labels":
                utterance = np.repeat(np.arange(len(starts) - 1), np.diff(starts))
                rows = np.flatnonzero(np.isin(utterance, utterance[rows]))
            if labels is not None:
                labels = np.where(scored, labels, UNLABELLED)
            dataset = UtteranceDataset(features, labels, rows, starts, teacher)
        else:
            dataset = self._frames(key, features, labels, rows)
        dataset.file = space
        return dataset

    def _frames(self, key: str, features, labels: Optional[np.ndarray], rows: np.ndarray) -> "FrameDataset":
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        on_device = self.features_on_device
        if on_device and key not in self._on_device:  # (on a CPU this keeps the memory map as it is)
            with warnings.catch_warnings():  # the map is read-only, and so are the tensors read from it
                warnings.filterwarnings("ignore", message=".*not writable.*")
                self._on_device[key] = (
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

"""Loading the HW2-1 ``timit_11`` files and splitting them for training.

The course's feature files are 2-4 GB, so they are memory-mapped, never copied: a batch
reads its rows straight from the map. The network computes in float32; a float64 file is
converted once, chunk by chunk, into a float32 cache file beside it, which is then mapped
in its place (half the memory, and every process of a DDP run on one node shares the
same pages). Each file is checked once, on first use, and any problem raises
:class:`InputError` with a message that names the file and what is wrong.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path
from typing import Literal, Optional, Union

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pytorch_lightning.utilities.rank_zero import rank_zero_only

from timit_lit.row_links import RowsInUtteranceOrder, Utterances, recover_utterances
from timit_lit.synthetic import has_timit_files, write_synthetic_timit
from timit_lit.utterances import segment_offsets, utterance_frames, utterance_starts, windows, windows_torch

TRAIN_FEATURES = "train_11.npy"
TRAIN_LABELS = "train_label_11.npy"
TEST_FEATURES = "test_11.npy"
TEST_LABELS = "test_label_11.npy"
# The row space of a folder whose utterances are not runs of one file's rows (MLE-bench's
# shuffled split): all files' rows in utterance order (timit_lit.row_links.RowsInUtteranceOrder).
RECOVERED = "utterance order"
# Below this mean length (rows per recovered utterance) the rows form no utterances to speak of.
MIN_MEAN_UTTERANCE = 3.0


class InputError(ValueError):
    """Bad input: the message names the file and the problem; the CLI prints it on one line."""


def map_npy(path: Path) -> np.memmap:
    """Memory-map a ``.npy`` file, checked to be as long as its header says: a damaged header
    that claims fewer rows or a narrower dtype would otherwise silently drop the rest."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as error:  # numpy raises several types for a file that is not .npy
        raise InputError(f"{path}: not a readable .npy file ({error})") from error
    size, expected = path.stat().st_size, array.offset + array.nbytes
    if size != expected:
        raise InputError(f"{path}: damaged .npy file: {size:,} bytes, where its header "
                         f"({array.dtype} {array.shape}) says {expected:,}")
    return array


def open_features(path: Path) -> np.ndarray:
    """Memory-map a 2-D float feature file (header only; rows are read on demand)."""
    if not path.is_file():
        raise InputError(f"{path}: file not found (expected a rows x features .npy array)")
    features = map_npy(path)
    if features.ndim != 2:
        raise InputError(f"{path}: features must be 2-D (rows x features), got shape {features.shape}")
    if not np.issubdtype(features.dtype, np.floating):
        raise InputError(f"{path}: features must be floating point, got dtype {features.dtype}")
    if len(features) == 0:
        raise InputError(f"{path}: holds no rows")
    return features


def check_finite(path: Path, chunk: np.ndarray, first_row: int = 0) -> None:
    """Name the first row of ``chunk`` (rows ``first_row...`` of ``path``) that holds NaN or inf."""
    finite = np.isfinite(chunk).all(axis=1)
    if not finite.all():
        raise InputError(f"{path}: row {first_row + int(np.argmin(finite))} holds NaN or inf")


def _chunks(n_rows: int, n_cols: int, chunk_bytes: int = 64 << 20):
    """Row ranges of about ``chunk_bytes`` of float32 each."""
    step = max(1, chunk_bytes // (4 * n_cols))
    for start in range(0, n_rows, step):
        yield start, min(start + step, n_rows)


def _report(message: str) -> None:
    """Progress of a long step, on stderr (once per node: callers run on local rank 0)."""
    print(f"timit_lit: {message}", file=sys.stderr, flush=True)


def float32_features(path: Path, cache_dir: Optional[Path] = None) -> np.ndarray:
    """The features of ``path`` as a float32 memory map, checked for NaN and inf.

    A float32 file is mapped as it is. A float64 file (the course's) is converted once,
    64 MB at a time through ordinary reads (so the conversion never holds more than a
    chunk in memory), into ``cache_dir/<name>``, written under a temporary name and
    renamed when complete, and stamped with the source's modification time; later runs
    map the cache while the stamp and shape still match the source.
    float32 is what the notebook's ``torch.from_numpy(x).float()`` computed in too.
    """
    features = open_features(path)
    if features.dtype == np.float32:
        for start, stop in _chunks(*features.shape):
            check_finite(path, features[start:stop], start)
        return features
    cache = float32_cache_path(path, cache_dir)
    if cache.is_file() and cache.stat().st_mtime_ns == path.stat().st_mtime_ns:  # stamped below
        try:
            cached = map_npy(cache)
        except InputError:  # a damaged cache is made again
            cached = None
        if cached is not None and cached.shape == features.shape and cached.dtype == np.float32:
            return cached
    _convert_to_float32(path, features.shape, features.dtype, features.offset, cache)
    return np.load(cache, mmap_mode="r")


def float32_cache_path(path: Path, cache_dir: Optional[Path] = None) -> Path:
    """Where the float32 copy of a float64 feature file is kept (default: ``float32_cache/`` beside it)."""
    return Path(cache_dir or path.parent / "float32_cache") / path.name


def _convert_to_float32(path: Path, shape: tuple[int, int], dtype: np.dtype, offset: int, cache: Path) -> None:
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"{cache.parent}: cannot create the float32 cache ({error}); set --data.cache_dir") from error
    tmp = cache.with_name(f".{cache.name}.tmp-{os.getpid()}")  # per process: nodes may race here
    started, reported = time.monotonic(), 0
    _report(f"converting {path} ({shape[0]:,} x {shape[1]} {dtype}) to float32 in {cache} (once)")
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        with open(path, "rb") as source:
            source.seek(offset)
            for start, stop in _chunks(*shape):
                chunk = np.fromfile(source, dtype=dtype, count=(stop - start) * shape[1]).reshape(-1, shape[1])
                check_finite(path, chunk, start)
                out[start:stop] = chunk
                if stop * 10 // shape[0] > reported:  # every 10%
                    reported = stop * 10 // shape[0]
                    _report(f"  {path.name}: {10 * reported}% ({time.monotonic() - started:.0f} s)")
        out.flush()
        del out
        source_stat = path.stat()
        os.utime(tmp, ns=(source_stat.st_atime_ns, source_stat.st_mtime_ns))  # ties the cache to this source
        os.replace(tmp, cache)
    finally:
        tmp.unlink(missing_ok=True)


def load_labels(path: Path, n_rows: int, num_classes: int, features_path: Path) -> np.ndarray:
    """Read labels (strings like '12' as in the course files, or integers) as int64, checked."""
    if not path.is_file():
        raise InputError(f"{path}: file not found (expected the labels of {features_path.name})")
    raw = map_npy(path)
    if raw.ndim != 1:
        raise InputError(f"{path}: labels must be 1-D, got shape {raw.shape}")
    if len(raw) != n_rows:
        raise InputError(f"{path}: {len(raw)} labels for {n_rows} feature rows in {features_path.name}")
    if raw.dtype.kind in "US":
        try:
            labels = raw.astype(np.int64)
        except Exception as error:  # ValueError; OverflowError; SystemError for bytes that are no characters
            bad = next((i for i in range(len(raw)) if not _integer_text(raw, i)), None)
            if bad is None:
                raise InputError(f"{path}: labels do not convert to integers ({error})") from None
            raise InputError(f"{path}: label {_shown(raw, bad)} at row {bad} is not an integer") from None
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


def _integer_text(raw: np.ndarray, row: int) -> bool:
    try:
        digits = str(raw[row]).strip().lstrip("+-")
    except Exception:  # a damaged string (SystemError for code points beyond Unicode)
        return False
    return digits.isascii() and digits.isdigit()


def _shown(raw: np.ndarray, row: int) -> str:
    try:
        return repr(str(raw[row]))
    except Exception:
        return "(not text)"


class FrameDataset(Dataset):
    """Some ``rows`` of a feature matrix (all by default), served a whole batch per call.

    ``__getitems__`` lets the DataLoader fetch a batch with one fancy-indexing read of the
    memory map instead of one call per row and a collate. Each item is ``(features,
    label)``, or ``(features, row id)`` when there are no labels, so that predictions made
    on several processes can be put back in file order. With ``ids_only`` it serves just
    the row ids, for features that already sit on the accelerator (see
    :meth:`TimitDataModule.on_after_batch_transfer`).
    """

    def __init__(
        self,
        features,
        labels: Optional[np.ndarray],
        rows: Optional[np.ndarray] = None,
        ids_only: bool = False,
    ):
        self.features = features  # a feature matrix, or ContextWindows: anything indexed by rows
        self.labels = labels
        self.rows = torch.as_tensor(np.arange(len(features)) if rows is None else rows, dtype=torch.int64)
        self.ids_only = ids_only

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, indices: list[int]):
        rows = self.rows[indices]
        if self.ids_only:
            return rows
        x = torch.from_numpy(self.features[rows.numpy()])
        y = torch.from_numpy(self.labels[rows.numpy()]) if self.labels is not None else rows
        return x, y

    def __getitem__(self, index: int):
        batch = self.__getitems__([index])
        return batch[0] if self.ids_only else (batch[0][0], batch[1][0])


class UtteranceDataset(Dataset):
    """Whole utterances of a ``timit_11`` file, for sequence models: each item is one
    stretch of consecutive ``rows`` inside one utterance (a whole utterance, unless the
    rows leave part of it out), a batch of them served per call, zero-padded to the longest.

    A batch is ``(features, targets, lengths)``: ``utterances x frames x features``,
    ``utterances x frames`` (labels, or row ids when there are no labels, so predictions
    find their place in the file; -1 in the padding and at frames whose label the split
    does not score: test rows and held-out labels inside an utterance, which stay in the
    input) and each utterance's real length.
    ``rows`` and ``labels`` are those of :class:`FrameDataset`: the frames served, in order.
    """

    def __init__(self, features, labels: Optional[np.ndarray], rows: np.ndarray, starts: np.ndarray):
        self.features = features  # a feature matrix or ContextWindows, indexed by row ids
        self.labels = labels
        self.rows = torch.as_tensor(rows, dtype=torch.int64)
        # Utterance i is self.rows[offsets[i]:offsets[i+1]].
        self.offsets = segment_offsets(rows, starts) if len(rows) else np.zeros(1, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitems__(self, indices: list[int]):
        spans = [(int(self.offsets[i]), int(self.offsets[i + 1])) for i in indices]
        lengths = torch.tensor([stop - start for start, stop in spans], dtype=torch.int64)
        width = self.features.shape[1] if isinstance(self.features, np.ndarray) else self.features.width_features
        x = torch.zeros(len(spans), int(lengths.max()), width)
        y = torch.full((len(spans), int(lengths.max())), -1, dtype=torch.int64)
        for i, (start, stop) in enumerate(spans):
            rows = self.rows[start:stop].numpy()
            x[i, : stop - start] = torch.from_numpy(np.asarray(self.features[rows]))
            y[i, : stop - start] = torch.from_numpy(self.labels[rows]) if self.labels is not None else self.rows[start:stop]
        return x, y, lengths

    def __getitem__(self, index: int):
        x, y, lengths = self.__getitems__([index])
        return x[0], y[0], lengths[0]


class LengthBucketedOrder(Sampler[int]):
    """A shuffled order of utterances in which each run of ``batch_size`` has similar lengths,
    so that padded batches hold little padding.

    Each epoch: shuffle, cut into pools of ``pool_batches`` batches, sort each pool by
    length, cut it into batches, shuffle the batches. Drawn from torch's global generator,
    like the DataLoader's own shuffling, so ``seed_everything`` and resuming cover it. Under
    DDP Lightning deals the order out to the processes row by row, and neighbours in it
    have similar lengths, so each process's batches do too.
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, pool_batches: int = 50):
        self.lengths = torch.as_tensor(lengths)
        self.batch_size, self.pool = batch_size, batch_size * pool_batches

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        order = torch.randperm(len(self.lengths))
        pools = [pool[self.lengths[pool].argsort(stable=True)] for pool in order.split(self.pool)]
        batches = torch.cat(pools).split(self.batch_size)
        return iter(torch.cat([batches[i] for i in torch.randperm(len(batches))]).tolist())


def keep_batch(batch):
    """Collate for :class:`FrameDataset`: its ``__getitems__`` already returns a batch."""
    return batch


class ContextWindows:
    """The rows of a ``timit_11`` file rebuilt as windows of ``width`` frames: indexed by row
    ids like the feature matrix itself, built per batch from each utterance's frames (see
    :mod:`timit_lit.utterances`), never across an utterance boundary, never materialised."""

    def __init__(self, features: np.ndarray, width: int, starts: Optional[np.ndarray] = None):
        self.starts = utterance_starts(features) if starts is None else starts
        self.frames = utterance_frames(features, self.starts)
        self.width = width
        self.width_features = width * self.frames.shape[1]

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        return windows(self.frames, self.starts, rows, self.width)

    def to(self, device: torch.device) -> "_DeviceWindows":
        return _DeviceWindows(torch.from_numpy(self.frames).to(device), torch.from_numpy(self.starts).to(device), self.width)


class _DeviceWindows:
    """:class:`ContextWindows` with its frames on the accelerator."""

    def __init__(self, frames: torch.Tensor, starts: torch.Tensor, width: int):
        self.frames, self.starts, self.width, self.is_cuda = frames, starts, width, frames.is_cuda

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        return windows_torch(self.frames, self.starts, rows, self.width)


class TimitDataModule(pl.LightningDataModule):
    """The HW2-1 files: ``train_11.npy`` + ``train_label_11.npy`` (fit, validate),
    ``test_11.npy`` (predict) and, where it exists, ``test_label_11.npy`` (test).

    Args:
        data_dir: folder holding the ``*_11.npy`` files.
        batch_size: rows per optimizer step (per process under DDP).
        steps_per_call: optimizer steps per Lightning training step. Each Lightning batch
            holds ``steps_per_call`` consecutive batches of the same shuffled order, and
            the model takes one Adam step on each, so the updates are exactly those of
            ``steps_per_call: 1``, with Lightning's per-step overhead paid once per
            ``steps_per_call`` steps (Keras calls this ``steps_per_execution``). ``auto``
            (the default): the model chooses when the fit starts
            (:class:`timit_lit.model.PhoneClassifier`); 1 for any other model.
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
        synthetic: if the files are missing, write a synthetic set there first (the demo).
        cache_dir: where float64 feature files are converted to float32 once
            (default: ``float32_cache/`` in ``data_dir``).
        batch_by: ``rows``: batches of ``batch_size`` rows (frames), for frame classifiers;
            ``utterances``: batches of ``batch_size`` whole utterances (``eval_batch_size``
            for evaluation), recovered from the rows' overlap and zero-padded, for
            sequence models such as :class:`timit_lit.recurrent.RecurrentPhoneClassifier`.
        bucket_by_length: with ``batch_by: utterances``, train on batches of utterances of
            similar lengths (:class:`LengthBucketedOrder`) rather than random ones: on the
            replica at 16 utterances per batch the padded batches hold about 1.01x the real
            frames instead of about 1.6x (``benchmarks/recurrent.py --data``). It changes
            the order of training, so it is off by default.
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
        steps_per_call: Union[int, Literal["auto"]] = "auto",
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
    ):
        super().__init__()
        self.save_hyperparameters()  # into checkpoints, for `predict --ckpt_path` without a config
        if not 0.0 <= val_ratio < 1.0:
            raise InputError(f"val_ratio must be in [0, 1), got {val_ratio}")
        if steps_per_call == "auto":
            steps_per_call = 1  # until the model chooses (PhoneClassifier.on_fit_start)
        if batch_size < 1 or steps_per_call < 1 or eval_batch_size < 1:
            raise InputError("batch_size, steps_per_call and eval_batch_size must be >= 1")
        if context < 1 or context % 2 == 0:
            raise InputError(f"context must be an odd number of frames, got {context}")
        if batch_by == "utterances" and (steps_per_call > 1 or features_on_device):
            raise InputError("batch_by utterances works with steps_per_call 1 and features_on_device false")
        if bucket_by_length and batch_by != "utterances":
            raise InputError("bucket_by_length sorts utterances into batches: it needs batch_by utterances")
        self.data_dir = Path(data_dir)
        self.batch_size = batch_size
        self.steps_per_call = steps_per_call
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
        if synthetic and not has_timit_files(self.data_dir):
            write_synthetic_timit(self.data_dir)
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
        self._maps: dict[str, np.ndarray] = {}
        self._starts: dict[str, np.ndarray] = {}
        self._utterances: Optional[Utterances] = None
        self._known: dict[str, np.ndarray] = {}  # split: labels decoding may take as given (timit_lit.decoding)

    def feature_files(self) -> list[str]:
        """The feature files of the folder, in the order their rows are numbered together."""
        return [name for name in (TRAIN_FEATURES, TEST_FEATURES) if (self.data_dir / name).is_file()]

    def utterances(self) -> Utterances:
        """The utterances of every feature file of the folder together
        (:func:`timit_lit.row_links.recover_utterances`: rows in any order, an utterance's
        rows possibly in several files), recovered once, said in one line on stderr, and kept."""
        if self._utterances is None:
            files = self.feature_files()
            self._utterances = recover_utterances([self._features(name) for name in files])
            if rank_zero_only.rank == 0:
                _report(self._describe(files, self._utterances))
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
        row id, -1 where ``split`` scores none) and ``features``."""
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

    def test_row_ids(self, name: str, rows: np.ndarray) -> np.ndarray:
        """The ``test_11.npy`` row of each of ``rows`` (ids in the row space ``name``), -1 for a training row."""
        rows = np.asarray(rows, dtype=np.int64)
        if name == TEST_FEATURES:
            return rows
        found = self.utterances()
        files = self.feature_files()
        combined = found.order[rows]
        first = found.file_starts[files.index(TEST_FEATURES)]
        return np.where(combined >= first, combined - first, -1)

    def _features(self, name: str) -> np.ndarray:
        """The float32 memory map of the feature file ``name``, checked on first use and kept."""
        if name in self._maps:
            return self._maps[name]
        path = self.data_dir / name
        width = open_features(path).shape[1]
        if width != self.file_width:
            raise InputError(
                f"{path}: rows have {width} features, but the data's width is {self.file_width} "
                f"(train and test files must match)"
            )
        self._maps[name] = float32_features(path, self.cache_dir)
        return self._maps[name]

    def _labelled(self, features_name: str, labels_name: str) -> tuple[np.ndarray, np.ndarray]:
        features = self._features(features_name)
        labels = load_labels(self.data_dir / labels_name, len(features), self.num_classes, self.data_dir / features_name)
        return features, labels

    def prepare_data(self) -> None:
        """Convert float64 features to float32 once per node (Lightning runs this on local rank 0 only)."""
        fn = self.trainer.state.fn if self.trainer else None
        names = [TRAIN_FEATURES] if fn in ("fit", "validate") else [TEST_FEATURES]
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
        self._loaded["train"] = self._dataset("train", space, source, starts, train, labels)
        self._loaded["val"] = self._dataset("train", space, source, starts, val, labels)

    def _setup_evaluation(self, split: str, with_labels: bool) -> None:
        """The ``test`` or ``predict`` dataset: every row of the test file scored (predicted),
        in its utterances' context where the run reads utterances."""
        needed_by = self._needs_utterances(fitting=False)
        if needed_by:
            self.require_utterances(needed_by)
        space, features, starts = self._space(TEST_FEATURES, needed_by is not None)
        scored = np.zeros(len(features), dtype=bool)
        scored[self._positions(space, TEST_FEATURES)] = True
        labels = None
        if with_labels:
            labels = np.full(len(features), -1, dtype=np.int64)
            labels[self._positions(space, TEST_FEATURES)] = self._labelled(TEST_FEATURES, TEST_LABELS)[1]
        if space == RECOVERED and (self.data_dir / TRAIN_LABELS).is_file():
            known = np.full(len(features), -1, dtype=np.int64)
            known[self._positions(space, TRAIN_FEATURES)] = self._labelled(TRAIN_FEATURES, TRAIN_LABELS)[1]
            self._known[split] = known
        source = features if self.context == 11 else ContextWindows(features, self.context, starts)
        self._loaded[split] = self._dataset(split, space, source, starts, scored, labels)

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
                 labels: Optional[np.ndarray]):
        """A dataset of the rows ``scored`` (a mask over the row space ``space``), each with
        its label (from ``labels``; row ids where None, in ``predict``): rows, or utterances, as
        ``batch_by`` says. Utterances are served whole, unscored rows (test rows, held-out
        labels) carrying label -1, where other rows share them (``split: labels``, or a
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
                labels = np.where(scored, labels, -1)
            dataset = UtteranceDataset(features, labels, rows, starts)
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
        into its ``steps_per_call`` optimizer batches."""
        if self._on_device:
            stage = self.trainer.state.stage
            file = "test" if stage == "test" else "predict" if stage == "predict" else "train"
            features, labels = self._on_device[file]
            batch = (features[batch], labels[batch] if labels is not None else batch)
        if self.steps_per_call > 1 and self.trainer.training:
            x, y = batch
            return list(zip(x.split(self.batch_size), y.split(self.batch_size)))
        return batch

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
            pin_memory=any(f.is_cuda for f, _ in self._on_device.values()),  # ids cross without a host sync
        )

    def train_dataloader(self) -> DataLoader:
        # steps_per_call batches of the one shuffled order, back to back: the same batches,
        # in the same order, as batch_size alone.
        return self._loader("train", self.batch_size * self.steps_per_call, shuffle=True)

    def val_dataloader(self):
        if len(self._loaded["val"]) == 0:
            return []  # val_ratio 0: no validation
        return self._loader("val", self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", self.eval_batch_size)

"""Reading and checking the HW2-1 ``timit_11`` files.

The course's feature files are gigabytes, so they are memory-mapped, never copied: a batch
reads its rows straight from the map. The network computes in float32; a float64 file is
converted once, chunk by chunk, into a float32 cache file beside it, which is then mapped
in its place (half the memory, and every process of a DDP run on one node shares the
same pages). Each file is checked once, on first use, and any problem raises
:class:`InputError` with a message that names the file and what is wrong.
"""

import os
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from timit_lit.atomic import atomic_path
from timit_lit.errors import InputError

TRAIN_FEATURES = "train_11.npy"
TRAIN_LABELS = "train_label_11.npy"
TEST_FEATURES = "test_11.npy"
TEST_LABELS = "test_label_11.npy"

FRAME_DIMS = 39  # features per frame: 13 static MFCCs + delta + delta-delta


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


def report(message: str) -> None:
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
    started, reported = time.monotonic(), 0
    report(f"converting {path} ({shape[0]:,} x {shape[1]} {dtype}) to float32 in {cache} (once)")
    with atomic_path(cache) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        with open(path, "rb") as source:
            source.seek(offset)
            for start, stop in _chunks(*shape):
                chunk = np.fromfile(source, dtype=dtype, count=(stop - start) * shape[1]).reshape(-1, shape[1])
                check_finite(path, chunk, start)
                out[start:stop] = chunk
                if stop * 10 // shape[0] > reported:  # every 10%
                    reported = stop * 10 // shape[0]
                    report(f"  {path.name}: {10 * reported}% ({time.monotonic() - started:.0f} s)")
        out.flush()
        del out
        source_stat = path.stat()
        os.utime(tmp, ns=(source_stat.st_atime_ns, source_stat.st_mtime_ns))  # ties the cache to this source


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
            raise InputError(f"{path}: label {_label_text(raw, bad)} at row {bad} is not an integer") from None
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


def _label_text(raw: np.ndarray, row: int) -> str:
    """Label ``row`` of ``raw`` as an error message quotes it."""
    try:
        return repr(str(raw[row]))
    except Exception:
        return "(not text)"

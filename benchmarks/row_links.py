"""Time and memory of recovering utterances from course-sized shuffled files (timit_lit.data.row_links.recover_utterances).

    python benchmarks/row_links.py SRC OUT          # e.g. ../data/replica /tmp/course_sized

Builds OUT once (2.9 GB of float32, never committed): the course's sizes, 1,229,932
training and 451,552 test rows, in MLE-bench's shuffled split. The rows are SRC's training
then test rows (in time order), then as many again with every value + 1.0 (a copy of the
utterances whose frames are new values: a tail and a head still match exactly where they
did), cut to 1,681,484 rows, then split as MLE-bench does (RandomState(0).permutation; the
first 451,552 ids test). Then, in a fresh process, times :func:`recover_utterances` on the
two memory maps and prints seconds, the peak of numpy's allocations (tracemalloc) and the
process's peak resident memory (which also counts the pages of the maps it read).
``--dtype float64`` builds float64 files instead (5.8 GB, the course's own dtype).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

TRAIN_ROWS, TEST_ROWS = 1_229_932, 451_552


def build(src: Path, out: Path, dtype: str) -> None:
    parts = [np.load(src / name, mmap_mode="r") for name in ("train_11.npy", "test_11.npy")]
    n_source = sum(len(p) for p in parts)
    n = TRAIN_ROWS + TEST_ROWS
    permutation = np.random.RandomState(0).permutation(n)
    out.mkdir(parents=True, exist_ok=True)

    def source_rows(ids: np.ndarray) -> np.ndarray:
        copy, row = np.divmod(ids, n_source)
        rows = np.empty((len(ids), parts[0].shape[1]), dtype=dtype)
        in_test = row >= len(parts[0])
        for part, where in ((0, ~in_test), (1, in_test)):
            local = row[where] - part * len(parts[0])
            sort = np.argsort(local)
            rows[np.flatnonzero(where)[sort]] = parts[part][local[sort]]
        return rows + copy[:, None].astype(dtype)

    for name, ids in (("test_11.npy", permutation[:TEST_ROWS]), ("train_11.npy", permutation[TEST_ROWS:])):
        mm = np.lib.format.open_memmap(out / f".{name}.tmp", "w+", dtype, (len(ids), parts[0].shape[1]))
        for first in range(0, len(ids), 65536):
            mm[first : first + 65536] = source_rows(ids[first : first + 65536])
        mm.flush()
        del mm
        (out / f".{name}.tmp").rename(out / name)


def time_recovery(folder: Path) -> None:
    from timit_lit.data.row_links import recover_utterances

    files = [np.load(folder / name, mmap_mode="r") for name in ("train_11.npy", "test_11.npy")]
    tracemalloc.start()
    started = time.perf_counter()
    found = recover_utterances(files)
    seconds = time.perf_counter() - started
    _, heap_peak = tracemalloc.get_traced_memory()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"{len(files[0]):,} + {len(files[1]):,} rows ({files[0].dtype}): {len(found):,} utterances "
          f"in {seconds:.1f} s; peak numpy allocations {heap_peak / 2**20:.0f} MiB, peak RSS {rss / 2**20:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, nargs="?")
    parser.add_argument("out", type=Path)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--time-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.time_only:
        return time_recovery(args.out)
    if not (args.out / "train_11.npy").is_file():
        started = time.perf_counter()
        build(args.src, args.out, args.dtype)
        print(f"built {args.out} in {time.perf_counter() - started:.0f} s")
    subprocess.run([sys.executable, __file__, str(args.out), "--time-only"], check=True)


if __name__ == "__main__":
    main()

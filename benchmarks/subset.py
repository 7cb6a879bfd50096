"""A small timit_11 folder from a big one: the first utterances of its training and test
files, cut at utterance starts (recovered from the rows' overlap), with their labels.

    python benchmarks/subset.py SOURCE_DIR TARGET_DIR TRAIN_UTTERANCES TEST_UTTERANCES

Used for short comparisons (docs/scaling.md: one process or two on a CPU).
"""

import sys
from pathlib import Path

import numpy as np

from timit_lit.data.utterances import utterance_starts


def main() -> None:
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    target.mkdir(parents=True, exist_ok=True)
    for split, n_utterances in (("train", int(sys.argv[3])), ("test", int(sys.argv[4]))):
        features = np.load(source / f"{split}_11.npy", mmap_mode="r")
        head = np.asarray(features[: 400 * (n_utterances + 2)])  # utterances are far shorter than 400 rows
        stop = int(utterance_starts(head)[n_utterances])
        np.save(target / f"{split}_11.npy", head[:stop])
        np.save(target / f"{split}_label_11.npy", np.load(source / f"{split}_label_11.npy", mmap_mode="r")[:stop])
        print(f"{split}: {n_utterances} utterances, {stop:,} rows")


if __name__ == "__main__":
    main()

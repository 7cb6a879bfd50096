"""A small timit_11 folder from a big one: the first utterances of its training and test
files, cut at utterance starts (recovered from the rows' overlap), with their labels.

    python benchmarks/subset.py SOURCE_DIR TARGET_DIR TRAIN_UTTERANCES TEST_UTTERANCES

Used for short comparisons (docs/scaling.md: one process or two on a CPU).
"""

import argparse
from pathlib import Path

import numpy as np

from timit_lit.data.utterances import utterance_starts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a timit_11 folder with labels for both files")
    parser.add_argument("target", type=Path, help="the folder to write the subset into")
    parser.add_argument("train_utterances", type=int)
    parser.add_argument("test_utterances", type=int)
    args = parser.parse_args()
    source, target = args.source, args.target
    for name in ("train_11.npy", "train_label_11.npy", "test_11.npy", "test_label_11.npy"):
        if not (source / name).is_file():
            parser.error(f"{source / name}: file not found")
    target.mkdir(parents=True, exist_ok=True)
    for split, n_utterances in (("train", args.train_utterances), ("test", args.test_utterances)):
        features = np.load(source / f"{split}_11.npy", mmap_mode="r")
        head = np.asarray(features[: 400 * (n_utterances + 2)])  # utterances are far shorter than 400 rows
        starts = utterance_starts(head)  # each utterance's first row, then the end
        if len(starts) <= n_utterances:
            parser.error(f"{source / f'{split}_11.npy'}: {len(starts) - 1} utterances, not {n_utterances}")
        stop = int(starts[n_utterances])
        np.save(target / f"{split}_11.npy", head[:stop])
        np.save(target / f"{split}_label_11.npy", np.load(source / f"{split}_label_11.npy", mmap_mode="r")[:stop])
        print(f"{split}: {n_utterances} utterances, {stop:,} rows")


if __name__ == "__main__":
    main()

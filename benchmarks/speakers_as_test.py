"""A timit_11 folder whose test file is some *training* speakers' utterances, with their
labels: speakers that stand in for the test split while a transductive recipe is chosen
(their features go in, their labels stay out of training and score it), so that the real
test split is scored once, with settings chosen elsewhere.

    python benchmarks/speakers_as_test.py SOURCE_DIR TARGET_DIR --train-speakers 100 --test-speakers 25

Speakers are runs of ``--utterances-per-speaker`` consecutive utterances of SOURCE_DIR's
training file (recovered from the rows' overlap): 8 in the replica of the course's files
written from real TIMIT speech, whose utterances go speaker by speaker. Both sets are
spread evenly over the speaker list (which is sorted by sex, then name), and never share
a speaker.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from timit_lit.data.utterances import utterance_starts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--train-speakers", type=int, default=100)
    parser.add_argument("--test-speakers", type=int, default=25)
    parser.add_argument("--utterances-per-speaker", type=int, default=8)
    args = parser.parse_args()
    features = np.load(args.source / "train_11.npy", mmap_mode="r")
    labels = np.load(args.source / "train_label_11.npy", mmap_mode="r")
    starts = utterance_starts(features)
    n_utterances = len(starts) - 1
    per = args.utterances_per_speaker
    if n_utterances % per:
        raise SystemExit(f"{args.source / 'train_11.npy'}: {n_utterances} utterances are not speakers of {per}")
    n_speakers = n_utterances // per
    chosen = np.linspace(0, n_speakers - 1, args.train_speakers + args.test_speakers).round().astype(int)
    if len(np.unique(chosen)) != len(chosen):
        raise SystemExit(f"only {n_speakers} speakers: ask for fewer")
    test = chosen[:: max(1, len(chosen) // args.test_speakers)][: args.test_speakers]
    train = np.setdiff1d(chosen, test)
    args.target.mkdir(parents=True, exist_ok=True)
    for split, speakers in (("train", train), ("test", test)):
        utterances = (speakers[:, None] * per + np.arange(per)).ravel()
        rows = np.concatenate([np.arange(starts[u], starts[u + 1]) for u in utterances])
        np.save(args.target / f"{split}_11.npy", np.asarray(features[rows]))
        np.save(args.target / f"{split}_label_11.npy", np.asarray(labels[rows]))
        print(f"{split}: {len(speakers)} speakers, {len(utterances)} utterances, {len(rows):,} rows")


if __name__ == "__main__":
    main()

"""Score a prediction CSV against MLE-bench's held-back test labels (accuracy, as its grader does).

    python benchmarks/mlebench_score.py prediction.csv ../data/mlebench/answers.npy

``answers.npy`` (written by ``../shared/tools/mlebench_split.py``) holds the labels of the
split's ``test_11.npy`` rows, in its order; the CSV is ``Id,ClassId`` (or ``Id,Class``).
Only this script reads it: nothing in training or prediction does.
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv")
    parser.add_argument("answers")
    args = parser.parse_args()
    predicted = np.loadtxt(args.csv, delimiter=",", skiprows=1, usecols=(0, 1), dtype=np.int64, ndmin=2)
    answers = np.load(args.answers)
    if not np.array_equal(predicted[:, 0], np.arange(len(answers))):
        raise SystemExit(f"{args.csv}: Ids are not 0..{len(answers) - 1} in order ({len(predicted)} rows)")
    print(f"{args.csv}: test accuracy {np.mean(predicted[:, 1] == answers):.4f} on {len(answers):,} rows")


if __name__ == "__main__":
    main()

"""MLE-bench's preparation of ml2021spring-hw2, applied to a generated data folder (the issue's procedure).

scikit-learn's ``train_test_split(range(n), test_size=share, random_state=seed)`` is a
ShuffleSplit: ``RandomState(seed).permutation(n)``, the first ``ceil(share * n)`` ids test,
the rest train, each in permutation order. Only the *training* file is re-split; the test
labels are kept apart in ``answers.npy``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

COURSE_TEST_SHARE = 451_552 / (1_229_932 + 451_552)


def mlebench_split(src: Path, out: Path, share: float = COURSE_TEST_SHARE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Write ``out``'s train/test files from ``src``'s training rows; returns the source row of
    every new training row and every new test row."""
    features = np.load(src / "train_11.npy")
    labels = np.load(src / "train_label_11.npy")
    permutation = np.random.RandomState(seed).permutation(len(features))
    n_test = math.ceil(share * len(features))
    test, train = permutation[:n_test], permutation[n_test:]
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "train_11.npy", features[train])
    np.save(out / "train_label_11.npy", labels[train])
    np.save(out / "test_11.npy", features[test])
    np.save(out / "answers.npy", labels[test].astype(np.int64))
    return train, test

"""Phone error rate and boundary / inner-frame accuracy recomputed without timit_lit.scoring, to check it against."""

from __future__ import annotations

import itertools

import numpy as np
import pytest


def edit_distance(hypothesis, reference):
    previous = list(range(len(reference) + 1))
    for i, h in enumerate(hypothesis, 1):
        current = [i]
        for j, r in enumerate(reference, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (h != r)))
        previous = current
    return previous[-1]


def independent_metrics(predictions, labels, segments):
    """PER and boundary / inner accuracy from ``segments``, a list of (first, stop) frame ranges."""
    edits = phones = 0
    boundary = np.zeros(len(labels), dtype=bool)
    for first, stop in segments:
        collapse = lambda frames: [k for k, _ in itertools.groupby(frames.tolist())]  # noqa: E731
        reference = collapse(labels[first:stop])
        edits += edit_distance(collapse(predictions[first:stop]), reference)
        phones += len(reference)
        for t in range(first, stop):
            boundary[t] = (t > first and labels[t] != labels[t - 1]) or (t < stop - 1 and labels[t] != labels[t + 1])
    correct = predictions == labels
    return {"per": edits / phones, "acc_boundary": correct[boundary].mean(), "acc_inner": correct[~boundary].mean(),
            "errors_at_boundary": boundary[~correct].mean()}


def assert_logged(metrics, stage, expected):
    for name, value in expected.items():
        assert float(metrics[f"{stage}/{name}"]) == pytest.approx(value, abs=1e-6), name

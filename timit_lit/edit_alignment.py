"""Substitutions, deletions and insertions: a minimum-edit alignment of two phone sequences.

torchmetrics' edit distance gives the number of edits (the phone error rate), not which
kind they are. A recogniser's errors call for different fixes by kind: insertions (short
spurious phones) for a minimum duration or an insertion penalty, deletions for a smaller
penalty, substitutions for a better network. So the alignment itself is kept here:
Levenshtein's table with unit costs, traced back from the end, preferring at equal cost a
match or substitution, then a deletion, then an insertion (as NIST's sclite does). Other
alignments of the same cost may split the edits differently; their total is always the
edit distance.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

from timit_lit.scoring import phone_sequences


@dataclass
class EditCounts:
    """Edits summed over many sequence pairs, and which phones they involved."""

    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    reference_phones: int = 0
    confusions: Counter = field(default_factory=Counter)  # (reference, hypothesis): substitutions
    deleted: Counter = field(default_factory=Counter)  # reference phone: deletions
    inserted: Counter = field(default_factory=Counter)  # hypothesis phone: insertions

    @property
    def edits(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    def rates(self) -> dict[str, float]:
        """Each kind of edit, and all of them (the phone error rate), per reference phone."""
        n = max(self.reference_phones, 1)
        return {"per": self.edits / n, "sub": self.substitutions / n, "del": self.deletions / n,
                "ins": self.insertions / n}

    def add(self, reference: Sequence[int], hypothesis: Sequence[int]) -> None:
        """Align one pair and count its edits."""
        self.reference_phones += len(reference)
        for ref, hyp in align(reference, hypothesis):
            if ref is None:
                self.insertions += 1
                self.inserted[hyp] += 1
            elif hyp is None:
                self.deletions += 1
                self.deleted[ref] += 1
            elif ref != hyp:
                self.substitutions += 1
                self.confusions[ref, hyp] += 1


def align(reference: Sequence[int], hypothesis: Sequence[int]) -> list[tuple[int | None, int | None]]:
    """A minimum-edit alignment as ``(reference phone, hypothesis phone)`` pairs in order:
    ``(r, None)`` a deletion, ``(None, h)`` an insertion, ``(r, h)`` a match or substitution."""
    ref, hyp = list(reference), list(hypothesis)
    n, m = len(ref), len(hyp)
    # cost[i][j]: edits between ref[:i] and hyp[:j]
    cost = [list(range(m + 1))] + [[i] + [0] * m for i in range(1, n + 1)]
    for i in range(1, n + 1):
        row, above, r = cost[i], cost[i - 1], ref[i - 1]
        for j in range(1, m + 1):
            row[j] = min(above[j - 1] + (r != hyp[j - 1]), above[j] + 1, row[j - 1] + 1)
    pairs = []
    i, j = n, m
    while i or j:
        if i and j and cost[i][j] == cost[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]):
            i, j = i - 1, j - 1
            pairs.append((ref[i], hyp[j]))
        elif i and cost[i][j] == cost[i - 1][j] + 1:
            i -= 1
            pairs.append((ref[i], None))
        else:
            j -= 1
            pairs.append((None, hyp[j]))
    return pairs[::-1]


def count_edits(references: Sequence[Sequence[int]], hypotheses: Sequence[Sequence[int]]) -> EditCounts:
    """The edits of every (reference, hypothesis) pair, summed."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    counts = EditCounts()
    for reference, hypothesis in zip(references, hypotheses):
        counts.add(reference, hypothesis)
    return counts


def frame_edit_counts(predictions, labels, offsets) -> EditCounts:
    """The edits between the phone sequences of framewise predictions and labels, segment by
    segment (runs of equal classes merged, as :func:`timit_lit.scoring.phone_error_rate` does)."""
    return count_edits([p.tolist() for p in phone_sequences(labels, offsets)],
                       [p.tolist() for p in phone_sequences(predictions, offsets)])

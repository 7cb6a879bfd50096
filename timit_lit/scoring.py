"""Where the errors are: the phone error rate, and accuracy at phone boundaries and inside phones.

Frame accuracy counts frames, but a recogniser is judged by the phones it outputs. Each
segment's frames collapse into a phone sequence (runs of equal classes merged: frames
``a a b b c`` are the phones ``a b c``), for the predictions and, the same way, for the
labels, and the edit distance between the two (torchmetrics' word error rate, the phones
written as words) gives the phone error rate::

    PER = sum over segments of (substitutions + deletions + insertions) / sum of reference phones

A framewise classifier that flickers for one frame inside a long phone loses one frame of
accuracy but makes two insertions; Viterbi decoding (:mod:`timit_lit.decoding`) is there
to remove such flicker, so PER shows its effect better than accuracy does. PER can
exceed 1 (insertions are not bounded by the reference's length).

Boundary frames: frame ``t`` of a segment is a *boundary* frame when its label differs
from the label of frame ``t-1`` or of frame ``t+1`` of the same segment: the last frame of
a phone and the first frame of the next. All other frames are *inner* frames. Where one
phone ends and the next begins is uncertain by a frame or so in the labels themselves,
so every model is worse on boundary frames; ``acc_inner`` says how well the phones are
recognised where there is no such doubt, and ``errors_at_boundary`` which share of the
wrong frames lies on a boundary.

Segments: the stretches of consecutive rows of one utterance that a split holds, as
offsets (:meth:`timit_lit.data.row_space.RowSpace.segments`): whole utterances, except that a
``split: contiguous`` cut inside an utterance makes two segments of it. A segment's edges
are not phone boundaries, and its PER is counted against its own frames' reference.
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.text import word_error_rate


def _numpy(values) -> np.ndarray:
    return values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


def phone_sequences(classes, offsets) -> list[np.ndarray]:
    """Each segment's frame classes with runs of equal classes merged into one phone."""
    classes, offsets = _numpy(classes), np.asarray(offsets)
    new_phone = np.ones(len(classes), dtype=bool)
    new_phone[1:] = classes[1:] != classes[:-1]
    new_phone[offsets[:-1]] = True  # every segment starts a phone, whatever the one before ended with
    phones_before = np.concatenate([[0], np.cumsum(new_phone)])[offsets]  # phones in the segments before each
    return np.split(classes[new_phone], phones_before[1:-1])


def _as_words(sequences: list[np.ndarray]) -> list[str]:
    """Each phone sequence as a sentence of class ids, the form torchmetrics' word error rate takes."""
    return [" ".join(map(str, phones.tolist())) for phones in sequences]


def phone_error_rate(predictions, labels, offsets) -> float:
    """Edits (substitutions, deletions, insertions) over all segments / reference phones."""
    hypotheses, references = phone_sequences(predictions, offsets), phone_sequences(labels, offsets)
    return float(word_error_rate(_as_words(hypotheses), _as_words(references)))


def boundary_mask(labels, offsets) -> np.ndarray:
    """True at the frames whose label differs from the previous or the next frame's in the same segment."""
    labels, offsets = _numpy(labels), np.asarray(offsets)
    change = labels[1:] != labels[:-1]  # between frames t and t+1
    change[offsets[1:-1] - 1] = False  # not across a segment's edge
    boundary = np.zeros(len(labels), dtype=bool)
    boundary[:-1] |= change
    boundary[1:] |= change
    return boundary


def boundary_accuracy(predictions, labels, offsets) -> dict[str, float]:
    """``acc_boundary`` and ``acc_inner``: the accuracy on boundary and on inner frames (each
    left out when there are no such frames); ``errors_at_boundary``: the share of wrong
    frames that are boundary frames (left out when none is wrong)."""
    labels = _numpy(labels)
    correct = _numpy(predictions) == labels
    boundary = boundary_mask(labels, offsets)
    result = {}
    if boundary.any():
        result["acc_boundary"] = float(correct[boundary].mean())
    if not boundary.all():
        result["acc_inner"] = float(correct[~boundary].mean())
    if not correct.all():
        result["errors_at_boundary"] = float(boundary[~correct].mean())
    return result

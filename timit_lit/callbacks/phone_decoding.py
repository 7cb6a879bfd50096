"""The phone-level decoder (:mod:`timit_lit.phone_hmm`) scored in validate and test, and written by predict."""

from __future__ import annotations

import numpy as np
import torch

from timit_lit.callbacks.viterbi import ViterbiEvaluation
from timit_lit.decoding import PhoneStatistics, frame_accuracy
from timit_lit.edit_alignment import frame_edit_counts
from timit_lit.errors import InputError
from timit_lit.phone_hmm import PhoneHmm, decode_segments


class PhoneDecoding(ViterbiEvaluation):
    """Decodes each utterance into phones that last at least their minimum duration, under
    a phone bigram and an insertion penalty (:mod:`timit_lit.phone_hmm`), from the model's
    phone statistics, as :class:`~timit_lit.callbacks.viterbi.ViterbiEvaluation` does with its
    frame-level Viterbi. ``validate`` and ``test`` log ``*/acc_phone_hmm`` and
    ``*/per_phone_hmm``, and the phone error rate's substitutions, deletions and
    insertions per reference phone as ``*/sub_phone_hmm``, ``*/del_phone_hmm``,
    ``*/ins_phone_hmm`` (:mod:`timit_lit.edit_alignment`); ``predict`` with it enabled
    writes the decoded classes (it and ``decoding`` cannot both be enabled there).
    ``configs/phone_hmm.yaml`` holds the settings chosen on validation utterances.

    Args:
        enabled: decode (off by default).
        lm_weight: weight of the phone bigram's log probabilities.
        insertion_penalty: subtracted from a path's score for every phone it holds.
        prior_weight: weight of the log priors divided out of the posteriors.
        min_duration: the shortest any phone may last, in frames.
        duration_scale: a phone lasts at least this fraction of its mean training
            duration (rounded; never less than ``min_duration``).
        duration_weight: weight of the log probabilities of looping in and leaving a
            phone's last state (its durations beyond the minimum).
    """

    accuracy_name = "acc_phone_hmm"
    option = "phone_decoding"

    def __init__(self, enabled: bool = False, lm_weight: float = 1.0, insertion_penalty: float = 0.0,
                 prior_weight: float = 0.0, min_duration: int = 1, duration_scale: float = 0.0,
                 duration_weight: float = 0.0):
        super().__init__(enabled, transition_weight=0.0, prior_weight=prior_weight)
        self.lm_weight, self.insertion_penalty = lm_weight, insertion_penalty
        self.min_duration, self.duration_scale, self.duration_weight = min_duration, duration_scale, duration_weight
        if min_duration < 1 or duration_scale < 0:
            raise InputError(f"phone_decoding.min_duration must be >= 1 and phone_decoding.duration_scale >= 0, "
                             f"got {min_duration} and {duration_scale}")

    def _settings(self) -> dict:
        return {"lm_weight": self.lm_weight, "insertion_penalty": self.insertion_penalty,
                "prior_weight": self.prior_weight, "min_duration": self.min_duration,
                "duration_scale": self.duration_scale, "duration_weight": self.duration_weight}

    def decode_segments(self, log_posteriors: torch.Tensor, offsets: np.ndarray, stats: PhoneStatistics) -> torch.Tensor:
        return decode_segments(log_posteriors, offsets, PhoneHmm.from_statistics(stats, **self._settings()))

    def scores(self, decoded: torch.Tensor, labels: np.ndarray, offsets: np.ndarray) -> dict[str, float]:
        rates = frame_edit_counts(decoded.cpu().numpy(), labels, offsets).rates()
        return {"acc_phone_hmm": frame_accuracy(decoded, labels),
                **{f"{kind}_phone_hmm": rates[kind] for kind in ("per", "sub", "del", "ins")}}

    def description(self) -> str:
        return "the phone decoder (" + ", ".join(f"{k} {v:g}" for k, v in self._settings().items()) + ")"

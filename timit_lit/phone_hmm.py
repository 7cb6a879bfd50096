"""A phone-level decoder: phones with a minimum duration, a phone bigram, an insertion penalty.

The frame-level Viterbi of :mod:`timit_lit.decoding` has one state per phone, so a phone
may last a single frame: a framewise classifier's flicker survives it as short spurious
phones, which cost two edits each in the phone error rate. Hybrid NN/HMM recognisers
instead give each phone a left-to-right chain of states. Here phone ``p`` is a chain of
``n_p`` states, each entered from the one before, the last one looping on itself, so a
phone lasts at least ``n_p`` frames; the phones follow each other under a *phone-level*
bigram (the training label sequences with repeats merged), and every phone entered pays
an insertion penalty. A path's score is

    sum_t [log P(p_t | x_t) - prior_weight * log P(p_t)]                 (acoustic)
    + lm_weight * [log P_init(q_1) + sum_k log P(q_k | q_{k-1})]          (phone bigram)
    + duration_weight * sum over phones [extra * log s_q + log(1 - s_q)]  (durations)
    - insertion_penalty * (number of phones)

over the frame phones ``p_t`` and the phone sequence ``q_1 q_2 ...`` they make. An acoustic
scale ``a`` multiplying the first line is the same as ``lm_weight / a`` and
``insertion_penalty / a`` (the best path does not change when every score is multiplied by
a constant), so it is not a separate setting. The durations term is the HMM's own
transition probabilities: a phone lasting ``n_q + extra`` frames loops ``extra`` times in
its last state with probability ``s_q`` and leaves it once (not the last phone of a
segment) with ``1 - s_q``, ``s_q`` chosen so that the mean of ``extra`` is the mean
training duration beyond the minimum (at least half a frame). A phone never follows itself (two runs of one
phone are one phone). The first and last phone of a segment may be shorter than their
minimum: a segment may be cut inside a phone, and a segment shorter than every minimum must
still decode.

All statistics come from :class:`timit_lit.decoding.PhoneStatistics`, which every checkpoint
carries: a frame transition from ``i`` to ``j != i`` is a phone-level bigram ``i j``, each
segment's first frame is its first phone, and a phone's frames over its occurrences is its
mean duration, from which the minimum durations are set (:meth:`PhoneHmm.from_statistics`).

Decoding runs in torch, float32, on the posteriors' device, over a padded batch of
utterances at once (:func:`decode_padded`), or over frames laid out by segment offsets
(:func:`decode_segments`, as :func:`timit_lit.decoding.viterbi_decode` takes them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from timit_lit.decoding import PhoneStatistics, check_offsets, one_cpu_thread


def mean_durations(stats: PhoneStatistics) -> np.ndarray:
    """Each phone's mean duration in frames over its occurrences in the training labels (1 for a phone never seen)."""
    entered = stats.initial + (stats.transitions.sum(0) - np.diag(stats.transitions))  # occurrences of each phone
    return np.where(entered > 0, stats.frames / np.maximum(entered, 1), 1.0)


@dataclass
class PhoneHmm:
    """The decoder's model: minimum durations, phone bigram, priors, and the weights that mix them.

    Args:
        min_durations: ``(phones,)`` frames each phone lasts at least (>= 1).
        log_initial: ``(phones,)`` log P(a segment's first phone).
        log_bigram: ``(phones, phones)`` log P(next phone | phone); the diagonal is unused.
        log_prior: ``(phones,)`` log P(phone) of a frame, divided out of the posteriors.
        log_stay: ``(phones,)`` log s_p, the last state's loop probability.
        lm_weight, insertion_penalty, prior_weight, duration_weight: as in the module docstring.
    """

    min_durations: np.ndarray
    log_initial: np.ndarray
    log_bigram: np.ndarray
    log_prior: np.ndarray
    log_stay: np.ndarray
    lm_weight: float = 1.0
    insertion_penalty: float = 0.0
    prior_weight: float = 1.0
    duration_weight: float = 0.0

    @classmethod
    def from_statistics(cls, stats: PhoneStatistics, duration_scale: float = 0.0, min_duration: int = 1,
                        lm_weight: float = 1.0, insertion_penalty: float = 0.0,
                        prior_weight: float = 1.0, duration_weight: float = 0.0) -> "PhoneHmm":
        """Phone ``p``'s minimum duration is ``max(min_duration, round(duration_scale * mean duration of p))``."""
        if min_duration < 1 or duration_scale < 0:
            raise ValueError(f"min_duration must be >= 1 and duration_scale >= 0, got {min_duration}, {duration_scale}")
        durations = np.maximum(min_duration, np.rint(duration_scale * mean_durations(stats))).astype(np.int64)
        bigram_counts = stats.transitions * (1 - np.eye(stats.num_phones, dtype=np.int64))
        bigram = np.log(bigram_counts + stats.smoothing)
        np.fill_diagonal(bigram, -np.inf)  # a phone never follows itself
        bigram -= np.logaddexp.reduce(bigram, axis=1, keepdims=True)
        extra = np.maximum(mean_durations(stats) - durations, 0.5)  # mean frames beyond the minimum
        log_stay = np.log(extra / (extra + 1))  # a geometric number of loops with that mean
        return cls(durations, stats.log_initial(), bigram, stats.log_prior(), log_stay, float(lm_weight),
                   float(insertion_penalty), float(prior_weight), float(duration_weight))

    @property
    def num_phones(self) -> int:
        return len(self.min_durations)


def decode_segments(log_posteriors, offsets, hmm: PhoneHmm, batch_utterances: int = 256) -> torch.Tensor:
    """The decoded phone of every frame (int64, input order) of frames laid out by ``offsets``
    (as :func:`timit_lit.decoding.viterbi_decode` takes them), in padded batches of up to
    ``batch_utterances`` segments of similar lengths."""
    scores = torch.as_tensor(log_posteriors)
    if scores.ndim != 2 or scores.shape[1] != hmm.num_phones:
        raise ValueError(f"log posteriors must be frames x {hmm.num_phones}, got shape {tuple(scores.shape)}")
    offsets = check_offsets(offsets, len(scores))
    lengths = np.diff(offsets)
    order = np.argsort(-lengths, kind="stable")
    path = torch.empty(len(scores), dtype=torch.int64, device=scores.device)
    for first in range(0, len(order), batch_utterances):
        chosen = order[first : first + batch_utterances]
        chosen_lengths = torch.as_tensor(lengths[chosen], device=scores.device)
        # frame index of (utterance i, time t): its start + t, clamped into the utterance (padding repeats its last frame)
        t = torch.arange(int(chosen_lengths.max()), device=scores.device)
        starts = torch.as_tensor(offsets[chosen], device=scores.device)
        index = starts[:, None] + torch.minimum(t[None, :], chosen_lengths[:, None] - 1)
        decoded = decode_padded(scores[index], chosen_lengths, hmm)
        real = t[None, :] < chosen_lengths[:, None]
        path[index[real]] = decoded[real]
    return path


def decode_padded(log_posteriors: torch.Tensor, lengths: torch.Tensor, hmm: PhoneHmm) -> torch.Tensor:
    """The decoded phone of every frame of a padded batch: ``log_posteriors`` is
    ``utterances x frames x phones``, utterance ``u``'s real frames the first ``lengths[u]``;
    returns ``utterances x frames`` int64 (padding's entries mean nothing)."""
    with one_cpu_thread(log_posteriors.device):
        return _decode(log_posteriors, lengths, hmm)


def _decode(log_posteriors: torch.Tensor, lengths: torch.Tensor, hmm: PhoneHmm) -> torch.Tensor:
    """Viterbi over the states ``(phone p, position d)``, ``d < D`` (the longest minimum).

    Each phone's chain is right-aligned: phone ``p`` enters at ``first[p] = D - n_p`` and
    leaves from ``D - 1`` (which loops), so advancing along every chain is one shift of the
    last axis, and positions left of ``first[p]`` stay impossible (-inf). Per frame and
    phone two backpointers suffice: which phone was left to enter ``p``, and whether ``p``'s
    last state came from itself.
    """
    device, dtype = log_posteriors.device, torch.float32
    n_utt, n_frames, n_phones = log_posteriors.shape
    lengths = lengths.to(device)
    durations = torch.as_tensor(hmm.min_durations, device=device)
    D = int(durations.max())
    first = D - durations  # (P,)
    acoustic = log_posteriors.to(dtype)
    if hmm.prior_weight != 0:
        acoustic = acoustic - hmm.prior_weight * torch.as_tensor(hmm.log_prior, dtype=dtype, device=device)
    # Weight 0 means no term at all (not 0 * log p): with no weights and one state per phone the decode is the argmax.
    lm = hmm.lm_weight != 0
    enter = torch.as_tensor(hmm.lm_weight * hmm.log_bigram if lm else np.zeros_like(hmm.log_bigram), dtype=dtype,
                            device=device)
    enter = enter - hmm.insertion_penalty
    enter.fill_diagonal_(-torch.inf)  # enter[q, p]: leaving q for p
    start = torch.as_tensor(hmm.lm_weight * hmm.log_initial if lm else np.zeros_like(hmm.log_initial), dtype=dtype,
                            device=device) - hmm.insertion_penalty

    # The last state's loop and exit (weight 0: no term at all).
    log_stay = torch.as_tensor(hmm.log_stay, dtype=dtype, device=device)
    stay_score = hmm.duration_weight * log_stay if hmm.duration_weight != 0 else torch.zeros_like(log_stay)
    exit_score = (hmm.duration_weight * torch.log1p(-log_stay.exp()) if hmm.duration_weight != 0
                  else torch.zeros_like(log_stay))
    enter = enter + exit_score[:, None]

    position = torch.arange(D, device=device)
    allowed = position[None, :] >= first[:, None]  # (P, D)
    # Frame 0: any state of a phone's chain (a segment may start inside a phone).
    delta = torch.where(allowed, (start + acoustic[:, 0])[:, :, None], torch.tensor(-torch.inf, device=device))
    delta = delta - delta.amax((1, 2), keepdim=True)
    entered_from = torch.zeros(n_frames, n_utt, n_phones, dtype=torch.uint8 if n_phones <= 256 else torch.int64,
                               device=device)
    stayed = torch.zeros(n_frames, n_utt, n_phones, dtype=torch.bool, device=device)
    first_index = first.expand(n_utt, n_phones)[:, :, None]
    single = durations == 1  # (P,): the first state is also the last
    for t in range(1, n_frames):
        leaving = delta[:, :, D - 1]  # (B, P) best score in each phone's last state
        best_entry, source = (leaving[:, :, None] + enter).max(dim=1)  # over the phone left: (B, P)
        looping = leaving + stay_score
        new = torch.cat([torch.full_like(delta[:, :, :1], -torch.inf), delta[:, :, :-1]], dim=2)  # advance
        new.scatter_(2, first_index, best_entry[:, :, None])
        other = new[:, :, D - 1]  # entry (one-state phones) or advance into the last state
        stay = looping >= other
        new[:, :, D - 1] = torch.maximum(looping, other)
        new = new + acoustic[:, t][:, :, None]
        new = new - new.amax((1, 2), keepdim=True)
        running = (t < lengths)[:, None, None]
        delta = torch.where(running, new, delta)
        entered_from[t] = source.to(entered_from.dtype)
        stayed[t] = stay

    # Trace back from each utterance's best final state (delta froze at its last frame).
    best = delta.reshape(n_utt, -1).argmax(1)
    phone, pos = best // D, best % D
    path = torch.empty(n_utt, n_frames, dtype=torch.int64, device=device)
    rows = torch.arange(n_utt, device=device)
    for t in range(n_frames - 1, -1, -1):
        path[:, t] = phone
        if t == 0:
            break
        last = pos == D - 1
        came_by_entry = torch.where(last, ~stayed[t, rows, phone] & single[phone], pos == first[phone])
        came_by_stay = last & stayed[t, rows, phone]
        previous_phone = torch.where(came_by_entry, entered_from[t, rows, phone].long(), phone)
        previous_pos = torch.where(came_by_entry | came_by_stay, D - 1, pos - 1)
        running = t < lengths
        phone = torch.where(running, previous_phone, phone)
        pos = torch.where(running, previous_pos, pos)
    return path

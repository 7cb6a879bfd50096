"""Viterbi decoding of framewise phone posteriors over whole utterances.

Phones last several frames and follow each other in typical orders, so the best sequence
of one utterance is better than the best phone of each frame alone. As in hybrid
NN/HMM recognisers, each phone is one state; the network's posterior becomes a scaled
likelihood and phone statistics from the training labels supply the rest:

    score(s_1..s_T) = sum_t [log P(s_t|x_t) - prior_weight * log P(s_t)]
                      + transition_weight * [log P_init(s_1) + sum_t log P(s_t|s_{t-1})]

``prior_weight`` (usually 1) turns posteriors into likelihoods divided by p(x), which
does not depend on the state; ``transition_weight`` balances the network against the
phone statistics and is chosen on validation (:func:`choose_transition_weight`). With
both weights 0 the decode is exactly the framewise argmax.

Utterances are given as offsets: an int64 array of length ``n_utterances + 1``, starting
at 0 and ending at the number of frames; utterance ``u`` is frames
``offsets[u]:offsets[u+1]``. Decoding runs in torch, in float64 (sums over hundreds of
frames stay exact far below any real score difference; float32 was no faster here, the
steps being small), on whatever device the posteriors are on, over all
utterances at once: at time ``t`` it advances every utterance still longer than ``t``.
On CPU it runs on one thread: each step is too small to share, and on a busy machine
waiting for a second thread made decoding slower, not faster.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

NUM_PHONES = 39
STATISTICS_KEY = "phone_statistics"  # where a checkpoint keeps them (PhoneStatistics.state_dict)
DEFAULT_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)


def check_offsets(offsets, n_frames: int) -> np.ndarray:
    """The utterance offsets as int64, after checking that they cover ``n_frames`` frames exactly."""
    offsets = np.asarray(offsets)
    if offsets.ndim != 1 or len(offsets) < 2 or not np.issubdtype(offsets.dtype, np.integer):
        raise ValueError(f"utterance offsets must be a 1-D integer array of length n_utterances + 1, got {offsets!r}")
    offsets = offsets.astype(np.int64)
    if offsets[0] != 0 or offsets[-1] != n_frames:
        raise ValueError(f"utterance offsets must start at 0 and end at {n_frames} frames, got {offsets[0]}..{offsets[-1]}")
    if np.any(np.diff(offsets) <= 0):
        raise ValueError(f"utterance {int(np.argmax(np.diff(offsets) <= 0))} is empty: offsets must increase strictly")
    return offsets


@dataclass
class PhoneStatistics:
    """Frame, first-frame and transition counts of the training labels, and the add-k smoothing.

    The counts are kept rather than probabilities so that the statistics are exact,
    can be re-smoothed, and go into a checkpoint as plain integer lists
    (:meth:`state_dict` / :meth:`from_state_dict`). ``transitions[i, j]`` counts frames of
    phone ``i`` followed, in the same utterance, by a frame of phone ``j`` (self loops
    included: they model durations).

    Add-k smoothing (default k = 1, Laplace) adds ``k`` to every count before
    normalising, so that a phone or transition never seen in training keeps a small
    non-zero probability: the decoder can still output it when the network is sure,
    and the prior never divides by zero. Against the counts of a training set of TIMIT's
    size, one more per event barely moves the probabilities of events seen in training.
    """

    frames: np.ndarray  # (S,) frames of each phone
    initial: np.ndarray  # (S,) utterances starting with each phone
    transitions: np.ndarray  # (S, S) within-utterance frame-to-frame transitions
    smoothing: float = 1.0

    @classmethod
    def estimate(cls, labels, offsets, num_phones: int = NUM_PHONES, smoothing: float = 1.0) -> "PhoneStatistics":
        """Count the training labels, utterance by utterance: no transition crosses a boundary."""
        labels = np.asarray(labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be a 1-D integer array, got dtype {labels.dtype} shape {labels.shape}")
        if len(labels) and (labels.min() < 0 or labels.max() >= num_phones):
            raise ValueError(f"labels must lie in 0..{num_phones - 1}, got {labels.min()}..{labels.max()}")
        if smoothing <= 0:
            raise ValueError(f"smoothing must be positive (log probabilities must stay finite), got {smoothing}")
        offsets = check_offsets(offsets, len(labels))
        labels = labels.astype(np.int64)
        inside = np.ones(len(labels) - 1, dtype=bool)  # pair (t, t+1) lies inside one utterance
        inside[offsets[1:-1] - 1] = False
        pairs = labels[:-1][inside] * num_phones + labels[1:][inside]
        return cls(
            frames=np.bincount(labels, minlength=num_phones),
            initial=np.bincount(labels[offsets[:-1]], minlength=num_phones),
            transitions=np.bincount(pairs, minlength=num_phones**2).reshape(num_phones, num_phones),
            smoothing=float(smoothing),
        )

    @property
    def num_phones(self) -> int:
        return len(self.frames)

    def log_prior(self) -> np.ndarray:
        """log P(phone): smoothed frame frequencies."""
        return _log_normalise(self.frames + self.smoothing)

    def log_initial(self) -> np.ndarray:
        """log P(first frame's phone)."""
        return _log_normalise(self.initial + self.smoothing)

    def log_transitions(self) -> np.ndarray:
        """log P(next frame's phone | this frame's phone), rows sum to 1."""
        return _log_normalise(self.transitions + self.smoothing)

    def state_dict(self) -> dict:
        """Plain lists, for a checkpoint (``torch.load(weights_only=True)`` reads them back)."""
        return {
            "frames": self.frames.tolist(),
            "initial": self.initial.tolist(),
            "transitions": self.transitions.tolist(),
            "smoothing": self.smoothing,
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> "PhoneStatistics":
        return cls(
            frames=np.asarray(state["frames"], dtype=np.int64),
            initial=np.asarray(state["initial"], dtype=np.int64),
            transitions=np.asarray(state["transitions"], dtype=np.int64),
            smoothing=float(state["smoothing"]),
        )


def _log_normalise(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    return np.log(counts) - np.log(counts.sum(axis=-1, keepdims=True))


def viterbi_decode(
    log_posteriors,
    offsets,
    stats: PhoneStatistics,
    transition_weight: float = 1.0,
    prior_weight: float = 1.0,
) -> torch.Tensor:
    """The best phone of every frame (int64, input order) under the score in the module docstring.

    ``log_posteriors`` (frames x phones, a tensor or array; log softmax of the network)
    may hold many utterances, laid out by ``offsets``. Runs on the posteriors' device.
    """
    scores = torch.as_tensor(log_posteriors)
    if scores.ndim != 2 or scores.shape[1] != stats.num_phones:
        raise ValueError(f"log posteriors must be frames x {stats.num_phones}, got shape {tuple(scores.shape)}")
    offsets = check_offsets(offsets, len(scores))
    device, num_phones = scores.device, stats.num_phones
    scores = scores.to(torch.float64)
    if prior_weight != 0:
        scores = scores - prior_weight * torch.as_tensor(stats.log_prior(), device=device)
    # Weight 0 means no term at all (not 0 * log p), so that weight 0 is exactly the argmax.
    if transition_weight != 0:
        log_trans = transition_weight * torch.as_tensor(stats.log_transitions(), device=device)
        log_init = transition_weight * torch.as_tensor(stats.log_initial(), device=device)
    else:
        log_trans = torch.zeros(num_phones, num_phones, dtype=torch.float64, device=device)
        log_init = torch.zeros(num_phones, dtype=torch.float64, device=device)
    with one_cpu_thread(device):
        return _viterbi(scores, offsets, log_init, log_trans)


@contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """torch's intra-op threads off while decoding on CPU (see the module docstring), then
    back: every decoder's small sequential steps (this module's and timit_lit.phone_hmm's)."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _viterbi(scores: torch.Tensor, offsets: np.ndarray, log_init: torch.Tensor, log_trans: torch.Tensor) -> torch.Tensor:
    """Viterbi over all utterances at once, longest first, so those still running are a prefix."""
    device = scores.device
    lengths = np.diff(offsets)
    order = np.argsort(-lengths, kind="stable")
    lengths = lengths[order]
    starts = torch.as_tensor(offsets[:-1][order], device=device)
    running = np.searchsorted(-lengths, -np.arange(lengths[0]), side="left")  # [t]: utterances longer than t
    # backpointer[f, j]: best previous phone when frame f has phone j (39 phones fit in a byte)
    backpointer = torch.empty(scores.shape, dtype=torch.uint8 if scores.shape[1] <= 256 else torch.int64, device=device)
    last_state = torch.empty(len(lengths), dtype=torch.int64, device=device)
    # to_from[j, i] = weighted log P(j | i): max over the last, contiguous dimension
    to_from = log_trans.T.contiguous()

    delta = scores[starts] + log_init
    delta = delta - delta.amax(1, keepdim=True)
    for t in range(1, len(running)):
        n = int(running[t])
        if n < len(delta):  # utterances n.. ended at frame t-1
            last_state[n : len(delta)] = delta[n:].argmax(1)
            delta = delta[:n]
        best, backpointer_t = (delta[:, None, :] + to_from).max(dim=2)
        frames = starts[:n] + t
        backpointer[frames] = backpointer_t.to(backpointer.dtype)
        delta = best + scores[frames]
        # Keep the best at exactly 0: bounded values, and with no transitions (weight 0)
        # every step adds exactly 0, so the decode is the framewise argmax bit for bit.
        delta = delta - delta.amax(1, keepdim=True)
    last_state[: len(delta)] = delta.argmax(1)

    path = torch.empty(len(scores), dtype=torch.int64, device=device)
    lengths_t = torch.as_tensor(lengths, device=device)
    path[starts + lengths_t - 1] = last_state
    state = last_state.clone()
    for t in range(len(running) - 1, 0, -1):
        n = int(running[t])
        frames = starts[:n] + t
        previous = backpointer[frames].gather(1, state[:n, None]).squeeze(1).long()
        path[frames - 1] = previous
        state[:n] = previous
    return path


def clamp_known(log_posteriors, known) -> torch.Tensor:
    """``log_posteriors`` with every frame whose label is known (``known`` >= 0) made certain
    of it: log-probability 0 for its label, -inf for the others. Decoding then keeps those
    frames' labels and chooses the rest's around them."""
    scores = torch.as_tensor(log_posteriors).clone()
    known = torch.as_tensor(np.asarray(known), device=scores.device)
    frames = torch.nonzero(known >= 0).squeeze(1)
    scores[frames] = float("-inf")
    scores[frames, known[frames]] = 0.0
    return scores


def frame_accuracy(predictions: torch.Tensor, labels) -> float:
    """Fraction of frames whose prediction equals the label."""
    labels = torch.as_tensor(labels, device=predictions.device)
    return float((predictions == labels).double().mean())


def choose_transition_weight(
    log_posteriors,
    labels,
    offsets,
    stats: PhoneStatistics,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
    prior_weight: float = 1.0,
) -> tuple[float, dict[float, float]]:
    """Decode validation with each transition weight; return the best one and every accuracy.

    Ties go to the weight listed first, so list the simplest (smallest) weight first.
    """
    accuracies = {
        float(w): frame_accuracy(viterbi_decode(log_posteriors, offsets, stats, w, prior_weight), labels)
        for w in weights
    }
    best = max(accuracies, key=accuracies.get)  # first of the maxima
    return best, accuracies

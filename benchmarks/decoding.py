"""Speed of Viterbi decoding on the replica's test split, with real TIMIT phone statistics.

    python benchmarks/decoding.py                    # ../shared/data/timit_replica.npz, CPU
    python benchmarks/decoding.py --device cuda

Reads only the labels of the replica's source (no features are built): the 3696 training
utterances give the phone statistics, the 400 test utterances (107,611 frames) the frames
to decode, cut and folded to 39 phones exactly as ``shared/tools/timit_replica.py`` does.
The posteriors are simulated, softmax(a * one-hot(label) + N(0, sigma)), because no
network is involved: the accuracies show that decoding works on real phone sequences,
not what it will add to a trained network (whose errors are not independent noise).
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import numpy as np
import torch

from timit_lit.decoding import PhoneStatistics, choose_transition_weight, frame_accuracy, viterbi_decode

SHARED = Path(__file__).resolve().parents[2] / "shared"


def replica_labels(npz: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """39-phone frame labels and utterance offsets of one split, leading/trailing silence cut."""
    spec = importlib.util.spec_from_file_location("timit_replica", SHARED / "tools" / "timit_replica.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    z = np.load(npz)
    phones61 = list(z["phones61"])
    to39 = np.array([tool.PHONES39.index(tool.FOLD.get(p, p)) for p in phones61])
    silence = phones61.index("h#")
    phones, lengths = z[f"{split}_phone"], z[f"{split}_lengths"]
    labels = []
    for utterance in np.split(phones, np.cumsum(lengths)[:-1]):
        inner = np.flatnonzero(utterance != silence)
        labels.append(to39[utterance[inner[0] : inner[-1] + 1]])
    offsets = np.concatenate([[0], np.cumsum([len(lab) for lab in labels])])
    return np.concatenate(labels), offsets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--npz", type=Path, default=SHARED / "data" / "timit_replica.npz")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--signal", type=float, default=3.0, help="a: logit of the true phone")
    parser.add_argument("--noise", type=float, default=1.5, help="sigma: logit noise")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    train_labels, train_offsets = replica_labels(args.npz, "train")
    labels, offsets = replica_labels(args.npz, "dev")
    stats = PhoneStatistics.estimate(train_labels, train_offsets)
    rng = np.random.default_rng(0)
    logits = args.signal * np.eye(39)[labels] + rng.normal(0.0, args.noise, (len(labels), 39))
    scores = torch.log_softmax(torch.as_tensor(logits, device=args.device), dim=1)
    lengths = np.diff(offsets)
    print(f"test split: {len(lengths)} utterances, {len(labels)} frames, {lengths.min()}..{lengths.max()} frames each")
    print(f"device {args.device}, torch threads {torch.get_num_threads()}")

    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        viterbi_decode(scores, offsets, stats, transition_weight=1.0, prior_weight=1.0)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    print(f"decode time: median {np.median(times):.2f} s of {args.repeats} ({', '.join(f'{t:.2f}' for t in times)})")

    print(f"framewise argmax accuracy: {frame_accuracy(scores.argmax(1), labels):.4f}")
    for prior_weight in (0.0, 1.0):
        best, accuracies = choose_transition_weight(scores, labels, offsets, stats, prior_weight=prior_weight)
        table = ", ".join(f"{w:g}: {a:.4f}" for w, a in accuracies.items())
        print(f"prior_weight {prior_weight:g}: accuracy by transition weight {{{table}}}; best {best:g}")


if __name__ == "__main__":
    main()

"""Time one training step of a 3-layer bidirectional LSTM over a padded batch of utterances,
as ``pack_padded_sequence`` + ``nn.LSTM(bidirectional=True)`` would compute it and as
:class:`timit_lit.models.RecurrentPhoneClassifier` does (two unidirectional layers per
layer, the backward one over each utterance reversed within its length): the same
outputs for the real frames, different kernels.

    python benchmarks/recurrent.py [--utterances 16] [--frames 400] [--hidden 256] [--layers 3]

With ``--data DIR`` (a ``timit_11`` folder) it times instead training steps of
``RecurrentPhoneClassifier`` on the folder's utterances, batches drawn at random and with
``data.bucket_by_length``, in real (unpadded) frames per second:

    python benchmarks/recurrent.py --data ../data/replica --steps 20
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from timit_lit.data import LengthBucketedOrder, RowSpace, UtteranceDataset
from timit_lit.data.utterances import utterance_starts
from timit_lit.models import RecurrentPhoneClassifier
from timit_lit.models.base import IGNORED


def seconds_per_step(step, repeats: int) -> float:
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=16)
    parser.add_argument("--frames", type=int, default=400, help="the longest utterance; the others 150..frames")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", help="a timit_11 folder: time real utterance batches, random vs bucketed")
    parser.add_argument("--steps", type=int, default=20, help="with --data: training steps timed per order")
    args = parser.parse_args()
    if args.data:
        return real_batches(args)
    torch.manual_seed(0)
    lengths = torch.randint(150, args.frames + 1, (args.utterances,))
    lengths[0] = args.frames
    x = torch.randn(args.utterances, args.frames, 39)
    real = torch.arange(args.frames)[None] < lengths[:, None]

    packed_lstm = nn.LSTM(39, args.hidden, args.layers, batch_first=True, bidirectional=True)
    head = nn.Linear(2 * args.hidden, 39)

    def packed_step() -> None:
        out, _ = packed_lstm(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=args.frames)
        head(out)[real].logsumexp(1).sum().backward()

    ours = RecurrentPhoneClassifier(input_dim=39, hidden_size=args.hidden, num_layers=args.layers)

    def our_step() -> None:
        ours(x, lengths)[real].logsumexp(1).sum().backward()

    print(f"{args.utterances} utterances of {int(lengths.min())}..{args.frames} frames ({int(lengths.sum()):,} real), "
          f"{args.layers} x {args.hidden} bidirectional LSTM, {torch.get_num_threads()} threads")
    packed = seconds_per_step(packed_step, args.repeats)
    mine = seconds_per_step(our_step, args.repeats)
    print(f"packed + nn.LSTM(bidirectional): {packed:.2f} s per training step")
    print(f"RecurrentPhoneClassifier:        {mine:.2f} s per training step ({packed / mine:.1f}x faster)")


def real_batches(args) -> None:
    """Frames/s of training steps on the centre frames of real utterances, random vs bucketed batches."""
    from pathlib import Path

    import numpy as np
    from torch.nn import functional as F

    features = np.load(Path(args.data) / "train_11.npy", mmap_mode="r")
    labels = np.load(Path(args.data) / "train_label_11.npy").astype(np.int64)
    starts = utterance_starts(features)
    centre = np.ascontiguousarray(features[:, 195:234])  # 11-frame rows: frame 6 of 11
    dataset = UtteranceDataset(centre, labels, np.arange(len(features)), RowSpace.in_time_order(starts))
    lengths = np.diff(starts)
    print(f"{len(lengths):,} utterances, batches of {args.utterances}, {args.layers} x {args.hidden} BiLSTM, "
          f"{args.steps} steps each, {torch.get_num_threads()} threads")
    for name, order in (("random", torch.randperm(len(lengths)).tolist()),
                        ("bucket_by_length", list(LengthBucketedOrder(lengths, args.utterances)))):
        torch.manual_seed(0)
        model = RecurrentPhoneClassifier(input_dim=39, hidden_size=args.hidden, num_layers=args.layers)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        batches = [order[i * args.utterances : (i + 1) * args.utterances] for i in range(args.steps + 1)]
        frames, computed, start = 0, 0, 0.0
        for i, indices in enumerate(batches):
            if i == 1:  # the first step warms up
                frames, computed, start = 0, 0, time.perf_counter()
            x, y, batch_lengths = dataset.__getitems__(indices)
            logits, targets = model.frame_logits((x, y, batch_lengths))
            optimizer.zero_grad()
            F.cross_entropy(logits, targets, ignore_index=IGNORED).backward()  # the padding's targets
            optimizer.step()
            frames, computed = frames + int(batch_lengths.sum()), computed + x.shape[0] * x.shape[1]  # real frames, padded slots
        elapsed = time.perf_counter() - start
        print(f"{name:17s} {frames / elapsed:8,.0f} real frames/s  (padded batches hold {computed / frames:.2f}x the real frames)")


if __name__ == "__main__":
    main()

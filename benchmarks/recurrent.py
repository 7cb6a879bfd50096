"""Time one training step of a 3-layer bidirectional LSTM over a padded batch of utterances,
as ``pack_padded_sequence`` + ``nn.LSTM(bidirectional=True)`` would compute it and as
:class:`timit_lit.recurrent.RecurrentPhoneClassifier` does (two unidirectional layers per
layer, the backward one over each utterance reversed within its length): the same
outputs for the real frames, different kernels.

    python benchmarks/recurrent.py [--utterances 16] [--frames 400] [--hidden 256] [--layers 3]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from timit_lit.recurrent import RecurrentPhoneClassifier


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
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()

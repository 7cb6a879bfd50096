"""Time one training step of the shipped recurrent network (configs/recurrent.yaml: 4 x 512
bidirectional LSTM, two frames per step, dropout, input masks, label smoothing, clipping,
AdamW) in float32 and under bf16 autocast (what ``--trainer.precision bf16-mixed`` runs),
on the CPU, alternating the two so that a busy machine slows both alike.

    python benchmarks/precision.py [--utterances 16] [--frames 267] [--repeats 3] [--rounds 2]

Utterances are random features of lengths drawn around ``--frames`` (the replica's mean
utterance is about 267 frames), one padded batch, timed after one warm-up step.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from torch.nn import functional as F

from timit_lit.models.recurrent import RecurrentPhoneClassifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=16)
    parser.add_argument("--frames", type=int, default=267, help="mean utterance length (lengths 0.75x..1.25x)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per round and precision")
    parser.add_argument("--rounds", type=int, default=2, help="alternations float32 / bf16")
    args = parser.parse_args()
    torch.manual_seed(0)
    lengths = torch.randint(int(args.frames * 0.75), int(args.frames * 1.25) + 1, (args.utterances,))
    x = torch.randn(args.utterances, int(lengths.max()), 39)
    y = torch.randint(0, 39, x.shape[:2])
    batch = (x, y, lengths)
    model = RecurrentPhoneClassifier(input_dim=39, hidden_size=512, num_layers=4, frames_per_step=2, dropout=0.3,
                                     label_smoothing=0.1, weight_decay=0.01, time_masks=2, feature_masks=2,
                                     feature_mask_dims=6).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)

    def step(bf16: bool) -> None:
        optimizer.zero_grad()
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            logits, targets = model.frame_logits(batch)
            loss = F.cross_entropy(logits, targets, ignore_index=-1, label_smoothing=0.1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()

    print(f"{args.utterances} utterances of {int(lengths.min())}..{int(lengths.max())} frames "
          f"({int(lengths.sum()):,} real), 4 x 512 BiLSTM, frames_per_step 2, AdamW; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    for bf16 in (False, True):
        step(bf16)  # warm-up: allocations, oneDNN's kernel choice
    for round_ in range(args.rounds):
        for bf16 in (False, True):
            start = time.perf_counter()
            for _ in range(args.repeats):
                step(bf16)
            ms = (time.perf_counter() - start) / args.repeats * 1000
            print(f"round {round_ + 1}  {'bf16 autocast' if bf16 else 'float32      '}  {ms:7.0f} ms per training step")


if __name__ == "__main__":
    main()

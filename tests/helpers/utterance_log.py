"""Test helper: a callback that records which utterances each process trains, epoch by epoch.

Used as ``--trainer.callbacks`` of a ``python -m timit_lit fit`` subprocess (DDP on the CPU).
An utterance is known by its length and its first frame's first features (generated data:
no two utterances share them). Each process writes ``utterances_rank{R}.json`` into the
trainer's ``default_root_dir``: a list per epoch of the utterances in the order trained.
"""

import json
from pathlib import Path

from pytorch_lightning.callbacks import Callback


def utterance_key(features, length) -> str:
    return f"{int(length)}:" + ",".join(f"{float(v):.5f}" for v in features[:4])


class UtteranceLog(Callback):
    def __init__(self):
        self.epochs: list[list[str]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epochs.append([])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        x, _, lengths = batch
        self.epochs[-1] += [utterance_key(x[i, 0], lengths[i]) for i in range(len(lengths))]

    def on_train_end(self, trainer, pl_module) -> None:
        path = Path(trainer.default_root_dir) / f"utterances_rank{trainer.global_rank}.json"
        path.write_text(json.dumps(self.epochs))

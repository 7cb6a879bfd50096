"""Checkpoint averaging: one checkpoint whose weights are the mean of several of one run's.

Issue 20's lever 4 measured without a new training: a run that keeps every epoch's
checkpoint (``--checkpoint.save_top_k -1``) is averaged over its last epochs offline, and
``validate`` compares the averages with the last epoch alone (docs/results.md):

    python benchmarks/average_checkpoints.py RUN/checkpoints/epoch=0{5,6,7}-*.ckpt --out avg567.ckpt
    python -m timit_lit validate --config configs/recurrent.yaml --data.data_dir DIR \\
        --data.val_ratio 0.2 --data.split utterance --ckpt_path avg567.ckpt

Every input is read as any checkpoint is (weights only, known networks); all must hold the
same weights by name and shape. The output keeps everything else of the last one given
(hyperparameters, data settings), so it loads wherever that one does; a float weight is the
plain mean, an integer one (a counter) is the last one's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import timit_lit.cli  # noqa: F401  the project's networks, which a checkpoint may name (never imported from it)
from timit_lit.callbacks.resume import AtomicCheckpointIO
from timit_lit.checkpoints import read_checkpoint
from timit_lit.errors import InputError


def averaged(paths: list[str]) -> dict:
    """The last checkpoint of ``paths`` with the mean of all their weights as its ``state_dict``."""
    checkpoints = [read_checkpoint(path)[1] for path in paths]
    last = checkpoints[-1]
    names = {name: tuple(weight.shape) for name, weight in last["state_dict"].items()}
    for path, checkpoint in zip(paths, checkpoints):
        found = {name: tuple(weight.shape) for name, weight in checkpoint["state_dict"].items()}
        if found != names:
            raise InputError(f"{path}: its weights differ from {paths[-1]}'s in name or shape (not one network)")
    weights = {}
    for name, weight in last["state_dict"].items():
        if weight.is_floating_point():
            total = sum(checkpoint["state_dict"][name].double() for checkpoint in checkpoints)
            weights[name] = (total / len(checkpoints)).to(weight.dtype)
        else:
            weights[name] = weight
    last["state_dict"] = weights
    return last


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="checkpoints of one network, the last one's settings kept")
    parser.add_argument("--out", required=True, help="where to write the averaged checkpoint (a new file)")
    args = parser.parse_args(argv)
    try:
        if Path(args.out).exists():
            raise InputError(f"{args.out}: already exists (not overwritten)")
        checkpoint = averaged(args.checkpoints)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    AtomicCheckpointIO().save_checkpoint(checkpoint, args.out)  # as fit saves its checkpoints
    print(f"{args.out}: the mean of the weights of {len(args.checkpoints)} checkpoints")
    return 0


if __name__ == "__main__":
    sys.exit(main())

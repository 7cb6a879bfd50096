"""What weight averaging gave: a checkpoint of the weights being trained, not the average.

A checkpoint saved with Lightning's ``EMAWeightAveraging`` (or ``StochasticWeightAveraging``
through ``WeightAveraging``) holds the averaged weights as its ``state_dict`` and the
weights being trained beside them as ``current_model_state``. This writes a copy whose
``state_dict`` is the latter, so that ``test`` on both files measures the averaging from
one training run (docs/results.md):

    python benchmarks/current_weights.py RUN/checkpoints/last.ckpt ../runs/current.ckpt
    python -m timit_lit test --config configs/recurrent.yaml --data.data_dir DIR --ckpt_path ../runs/current.ckpt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import timit_lit.cli  # noqa: F401  the project's networks, which a checkpoint may name (never imported from it)
from timit_lit.callbacks.resume import AtomicCheckpointIO
from timit_lit.checkpoints import read_checkpoint
from timit_lit.errors import InputError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a checkpoint saved with weight averaging")
    parser.add_argument("out", help="where to write the copy with the trained (not averaged) weights")
    args = parser.parse_args(argv)
    try:
        _, checkpoint = read_checkpoint(args.checkpoint)  # untrusted like any other: weights only
        current = checkpoint.pop("current_model_state", None)
        if current is None:
            raise InputError(f"{args.checkpoint}: holds no current_model_state (not saved with weight averaging)")
        if Path(args.out).exists():
            raise InputError(f"{args.out}: already exists (not overwritten)")
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    checkpoint["state_dict"] = current
    checkpoint["callbacks"] = {k: v for k, v in checkpoint.get("callbacks", {}).items() if "WeightAveraging" not in k}
    AtomicCheckpointIO().save_checkpoint(checkpoint, args.out)  # as fit saves its checkpoints
    print(f"{args.out}: the trained weights of {args.checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

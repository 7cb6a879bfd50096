"""What a recipe's first training steps compute: for each step, digests of the batch (its
inputs, its targets, the inputs after the training masks), of torch's random state before
the step, and the loss, gradient norm and learning rate. A change to the batch order, the
masks, the targets or the loss shows here, step by step, long before it shows (or hides)
in a complete run's accuracy.

    python benchmarks/recipe_steps.py --config configs/recurrent.yaml --data DIR [--steps 4] [FIT_OPTIONS...]
    python benchmarks/recipe_steps.py ... --write FILE    # pin these steps (JSON)
    python benchmarks/recipe_steps.py ... --check FILE    # compare with pinned steps; exit 1 where they differ

The digests must agree exactly (they are integers and exact copies of floats); the loss and
gradient norm within ``--rtol`` (float kernels differ a little between CPUs). The suite runs
``--check`` on generated data for the shipped recipes (tests/test_recipe_steps.py); when a
change to what training computes is meant, pin the new steps with ``--write`` in the same
commit and say why in its message.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path

import pytorch_lightning as pl
import torch

from timit_lit.cli import main as timit_lit_main

FLOATS = ("loss", "grad_norm", "lr")


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha1(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


class StepRecord(pl.Callback):
    """Records each training step (see the module's docstring); read ``steps`` after the fit."""

    def __init__(self):
        self.steps: list[dict] = []
        self._masked: list[str] = []

    def on_train_start(self, trainer, pl_module):
        masking = getattr(pl_module, "masking", None)  # the recurrent model's input masks
        if isinstance(masking, torch.nn.Module):
            masking.register_forward_hook(lambda module, args, out: self._masked.append(digest(out)))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._masked.clear()
        self._step = {"step": trainer.global_step, "rng": digest(torch.get_rng_state()),
                      "inputs": digest(batch[0]), "targets": digest(batch[1]), "shape": list(batch[0].shape)}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad.detach().flatten() for p in pl_module.parameters() if p.grad is not None]
        self._step["grad_norm"] = float(torch.cat(grads).norm())
        self._step["lr"] = float(optimizer.param_groups[0]["lr"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self._step["loss"] = float(loss)
        if self._masked:
            self._step["masked_inputs"] = self._masked[-1]
        self.steps.append(self._step)


def record(fit_options: list[str], steps: int, workdir: Path) -> list[dict]:
    """The first ``steps`` training steps of ``fit`` with these options, run in ``workdir``."""
    recorder = StepRecord()
    timit_lit_main(["fit", *fit_options, "--trainer.max_steps", str(steps),
                    "--trainer.default_root_dir", str(workdir), "--trainer.limit_val_batches", "0",
                    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"],
                   callbacks=[recorder])
    return recorder.steps


def differences(pinned: list[dict], measured: list[dict], rtol: float) -> list[str]:
    """One line per value that differs: digests exactly, the floats within ``rtol``."""
    lines = [] if len(pinned) == len(measured) else [f"{len(measured)} steps recorded, {len(pinned)} pinned"]
    for want, got in zip(pinned, measured):
        for key in sorted(set(want) | set(got)):
            a, b = want.get(key), got.get(key)
            same = (a is not None and b is not None and math.isclose(a, b, rel_tol=rtol)) if key in FLOATS else a == b
            if not same:
                lines.append(f"step {want.get('step')}: {key} is {b}, pinned {a}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """The command; returns its exit status (1: ``--check`` found differences)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", required=True, help="fit's --config (repeatable)")
    parser.add_argument("--data", required=True, help="a timit_11 folder")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--workdir", default="lightning_logs/recipe_steps", help="where the fit's run folder goes")
    parser.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance of loss, gradient norm, lr")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--write", help="write the steps to this JSON file")
    what.add_argument("--check", help="compare with the steps pinned in this JSON file")
    args, fit_options = parser.parse_known_args(argv)
    options = [part for config in args.config for part in ("--config", config)] + ["--data.data_dir", args.data]
    steps = record(options + fit_options, args.steps, Path(args.workdir))
    for step in steps:
        print(json.dumps(step))
    if args.write:
        Path(args.write).write_text(json.dumps(steps, indent=1) + "\n")
        print(f"pinned {len(steps)} steps in {args.write}")
    if args.check:
        lines = differences(json.loads(Path(args.check).read_text()), steps, args.rtol)
        print("\n".join(lines) if lines else f"the {len(steps)} steps agree with {args.check}")
        return 1 if lines else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

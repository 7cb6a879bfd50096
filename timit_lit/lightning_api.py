"""Every use of Lightning's private API, each behind one small function.

Lightning documents none of what follows, so any release may change it; pyproject pins
``pytorch-lightning`` to the minor version the suite has run on, and
``tests/test_lightning_api.py`` checks each function against the installed Lightning, so
that a change fails there, by name, rather than as a wrong step count somewhere else.

- a LightningModule's trainer when it may have none (``_trainer``: ``.trainer`` raises then);
- the fit loop's logging step (``_batches_that_stepped``): TensorBoard's x axis;
- the optimizer-step progress trackers behind ``trainer.global_step``;
- ``ModelCheckpoint._every_n_train_steps``;
- Lightning's global RNG state collection (``_collect_rng_states`` / ``_set_rng_states``);
- ``LightningCLI._parse_ckpt_path`` and the keys LightningCLI saves into hyper_parameters;
- the help line of each subcommand in LightningCLI's parser (argparse's pseudo-actions of its
  subcommands action, as jsonargparse keeps them).
"""

from __future__ import annotations

from typing import Any, Optional

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.utilities.seed import _collect_rng_states, _set_rng_states

# Keys LightningCLI adds to the hyper_parameters a model saves: the network's class path, and
# the instantiator that load_from_checkpoint uses.
CLI_HPARAM_KEYS = ("_class_path", "_instantiator")


def is_fitting(module: "pl.LightningModule") -> bool:
    """Whether ``module`` is attached to a Trainer that is fitting (False when it is attached
    to none, as when ``load_from_checkpoint`` builds it)."""
    trainer = module._trainer
    return trainer is not None and trainer.state.fn == "fit"


def logged_step(trainer: "pl.Trainer") -> int:
    """The step at which ``self.log`` values are written (Lightning's batches that stepped)."""
    return trainer.fit_loop.epoch_loop._batches_that_stepped


def set_logged_step(trainer: "pl.Trainer", step: int) -> None:
    trainer.fit_loop.epoch_loop._batches_that_stepped = step


def checkpoint_logged_step(checkpoint: dict) -> Optional[int]:
    """The logging step a checkpoint's fit had reached (None if the checkpoint does not say)."""
    loops = checkpoint.get("loops", {}).get("fit_loop", {})
    return loops.get("epoch_loop.state_dict", {}).get("_batches_that_stepped")


def count_own_optimizer_steps(trainer: "pl.Trainer", steps: int) -> None:
    """A training step that took ``steps`` optimizer steps itself (manual optimization): count
    them all in ``trainer.global_step`` and in the logging step, which Lightning advances by
    one per training step."""
    progress = trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
    for _ in range(steps):
        progress.increment_ready()
        progress.increment_completed()
    trainer.fit_loop.epoch_loop._batches_that_stepped += steps - 1


def move_optimizer_steps(trainer: "pl.Trainer", to_manual: bool) -> None:
    """Move the optimizer steps counted so far to the counter of the mode the fit runs in now.

    Lightning counts ``global_step`` in automatic optimization's tracker or in manual
    optimization's, by the model's mode; a run resumed in the other mode would start again from 0.
    """
    loop = trainer.fit_loop.epoch_loop
    automatic = loop.automatic_optimization.optim_progress.optimizer.step.total
    manual = loop.manual_optimization.optim_step_progress.total
    source, target = (automatic, manual) if to_manual else (manual, automatic)
    if source.completed:
        target.ready, target.completed = target.ready + source.ready, target.completed + source.completed
        source.ready = source.completed = 0


def every_n_train_steps(callback: Callback) -> int:
    """A checkpoint callback's ``every_n_train_steps`` (0 for any other callback)."""
    return getattr(callback, "_every_n_train_steps", 0) or 0


def collect_rng_states() -> dict[str, Any]:
    """The global RNG states (torch, CUDA, numpy, Python) as Lightning's ``seed_everything`` sets them."""
    return _collect_rng_states()


def set_rng_states(states: dict[str, Any]) -> None:
    _set_rng_states(states)


class CheckpointHparamsCLI(LightningCLI):
    """LightningCLI whose step that takes the model's class and arguments from
    ``--ckpt_path``'s hyper_parameters (Lightning's private ``_parse_ckpt_path``, which it runs
    right after :meth:`parse_arguments`) is :meth:`model_from_checkpoint`, for a subclass to replace."""

    def _parse_ckpt_path(self) -> None:
        self.model_from_checkpoint()

    def model_from_checkpoint(self) -> None:
        super()._parse_ckpt_path()


def set_subcommand_help(parser, helps: dict[str, str]) -> None:
    """Replace the one-line help ``--help`` shows for the subcommands named in ``helps``
    (LightningCLI gives each the first line of the Trainer method's docstring, often cut
    mid-sentence, and takes no other)."""
    for choice in parser._subcommands_action._choices_actions:
        if choice.dest in helps:
            choice.help = helps[choice.dest]

"""What a resumed fit hands to Lightning besides the weights, checked before Lightning restores it.

Lightning and torch take damaged entries of a checkpoint's training state (loops,
optimizers, schedulers) with a traceback, or without a word (a missing optimizer skipped,
a moment of the wrong shape failing at the first step). :func:`check_training_state`
compares each entry with this run's own, so that a damaged file gets one line naming it.
:class:`~timit_lit.callbacks.ResumeState` calls it, and keeps its own entries under
:data:`CHECKPOINT_KEY`.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from timit_lit.errors import InputError

CHECKPOINT_KEY = "timit_lit"  # where ResumeState keeps its entries (RNG states, logger version) in a checkpoint


# Optimizers whose state per parameter is element-wise: each tensor of it has its parameter's
# shape, or one element (a step count). Others (Adafactor's factored moments, LBFGS's history)
# are checked for their groups only.
_ELEMENTWISE_OPTIMIZERS = (torch.optim.Adam, torch.optim.SGD, torch.optim.RMSprop, torch.optim.Adagrad,
                           torch.optim.Adadelta, torch.optim.Adamax, torch.optim.NAdam, torch.optim.RAdam,
                           torch.optim.ASGD, torch.optim.Rprop, torch.optim.SparseAdam)


def check_training_state(path: str, checkpoint: dict, trainer) -> None:
    """What a resumed fit hands to Lightning besides the weights, checked against this run's
    own loops, optimizers and schedulers: Lightning and torch take damaged entries with a
    traceback, or without a word (a missing optimizer skipped, a moment of the wrong shape
    failing at the first step). Raises InputError naming the file and the entry."""
    problem = _training_state_problem(checkpoint, trainer)
    if problem:
        raise InputError(f"{path}: damaged checkpoint ({problem}); fit cannot resume from it")


def _training_state_problem(checkpoint: dict, trainer) -> Optional[str]:
    loops = checkpoint.get("loops")
    if loops is not None:
        if not isinstance(loops, dict) or "fit_loop" not in loops:
            return "its loops entry holds no fit_loop"
        problem = _structure_problem(loops["fit_loop"], trainer.fit_loop.state_dict(), "loops.fit_loop", strict=True)
        if problem:
            return problem
    if not trainer.strategy.lightning_restore_optimizer:
        return None
    for entry, live in (("optimizer_states", trainer.optimizers), ("lr_schedulers", trainer.lr_scheduler_configs)):
        saved = checkpoint.get(entry)
        if saved is None:
            return f"it holds no {entry}: saved with save_weights_only?"
        if not isinstance(saved, list) or len(saved) != len(live):
            return f"{entry} is {_kind(saved)}, where this run has {len(live)}"
    for i, (saved, optimizer) in enumerate(zip(checkpoint["optimizer_states"], trainer.optimizers)):
        problem = _optimizer_problem(saved, optimizer, f"optimizer_states[{i}]")
        if problem:
            return problem
    for i, (saved, config) in enumerate(zip(checkpoint["lr_schedulers"], trainer.lr_scheduler_configs)):
        problem = _structure_problem(saved, config.scheduler.state_dict(), f"lr_schedulers[{i}]")
        if problem:
            return problem
    return None


def _optimizer_problem(saved: Any, optimizer: torch.optim.Optimizer, where: str) -> Optional[str]:
    """What is wrong with ``saved`` as the state of ``optimizer`` (None if nothing): its
    groups as this optimizer's, each tensor of an element-wise state as its parameter."""
    if not (isinstance(saved, dict) and isinstance(saved.get("state"), dict) and isinstance(saved.get("param_groups"), list)):
        return f"{where} is not an optimizer state (state and param_groups)"
    groups, own = saved["param_groups"], optimizer.param_groups
    if len(groups) != len(own):
        return f"{where} has {len(groups)} parameter groups, {type(optimizer).__name__} here {len(own)}"
    parameters = {}  # the saved index of each parameter -> the parameter it is restored into
    for i, (group, live) in enumerate(zip(groups, optimizer.state_dict()["param_groups"])):
        indices = group.get("params") if isinstance(group, dict) else None
        if not (isinstance(indices, list) and all(type(k) is int for k in indices)):
            return f"{where}.param_groups[{i}] has no list of parameter numbers"
        if len(indices) != len(own[i]["params"]):
            return f"{where}.param_groups[{i}] has {len(indices)} parameters, this model's {len(own[i]['params'])}"
        settings = {key: value for key, value in group.items() if key != "params"}
        problem = _structure_problem(settings, live, f"{where}.param_groups[{i}]")
        if problem:
            return problem
        parameters.update(zip(indices, own[i]["params"]))
    for index, state in saved["state"].items():
        if index not in parameters:
            return f"{where}.state[{index!r}] belongs to no parameter"
        if not isinstance(state, dict):
            return f"{where}.state[{index}] is a {type(state).__name__}, not a mapping"
        if not isinstance(optimizer, _ELEMENTWISE_OPTIMIZERS):
            continue
        shape = tuple(parameters[index].shape)
        for name, value in state.items():
            if not isinstance(value, (torch.Tensor, int, float)) or isinstance(value, bool):
                return f"{where}.state[{index}].{name} is a {type(value).__name__}, not a tensor"
            if isinstance(value, torch.Tensor) and value.numel() > 1 and tuple(value.shape) != shape:
                return f"{where}.state[{index}].{name} is {tuple(value.shape)}, its parameter {shape}"
    return None


def _structure_problem(saved: Any, live: Any, where: str, strict: bool = False) -> Optional[str]:
    """Where ``saved`` differs from ``live`` (this run's own state) in structure or kind of
    value; None if nowhere. Keys that ``live`` has and ``saved`` lacks are a problem only if
    ``strict`` (Lightning's loops index them; torch fills optimizers' and schedulers' own)."""
    if isinstance(live, dict):
        if not isinstance(saved, dict):
            return f"{where} is {_kind(saved)}, not a mapping"
        for key, value in live.items():
            if key in saved:
                problem = _structure_problem(saved[key], value, f"{where}.{key}", strict)
                if problem:
                    return problem
            elif strict:
                return f"{where} has no {key}"
        return None
    if isinstance(live, (list, tuple)):
        if not isinstance(saved, (list, tuple)) or len(saved) != len(live):
            return f"{where} is {_kind(saved)}, not {_kind(live)}"
        return next(filter(None, (_structure_problem(s, v, f"{where}[{i}]", strict)
                                  for i, (s, v) in enumerate(zip(saved, live)))), None)
    if live is None:
        return None
    if isinstance(live, bool) or isinstance(live, str):
        ok = type(saved) is type(live)
    elif isinstance(live, int):
        ok = type(saved) is int
    elif isinstance(live, float):
        ok = isinstance(saved, (int, float)) and not isinstance(saved, bool)
    elif isinstance(live, torch.Tensor):
        ok = isinstance(saved, torch.Tensor) and saved.shape == live.shape
    else:
        ok = True  # a kind of value this check does not know: left to its owner
    return None if ok else f"{where} is {_kind(saved)}, not {_kind(live, shown=False)}"


def _kind(item: Any, shown: bool = True) -> str:
    """A value as a message names it: a short one as it is (if ``shown``), else its kind."""
    if isinstance(item, torch.Tensor):
        return f"a tensor {tuple(item.shape)}"
    if isinstance(item, (list, tuple)):
        return f"{len(item)} values"
    if shown and isinstance(item, (int, float, str)) and len(repr(item)) < 40:
        return repr(item)
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(type(item), f"a {type(item).__name__}")

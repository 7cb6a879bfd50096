"""Checkpoints: finding them (``--ckpt_path last`` / ``best`` / ``hpc``), reading them, trusting them.

Checkpoints from others are taken as data, never as code.

Checkpoints travel (students share them, ensembles take other people's), so nothing read
from one may run code. ``torch.load(weights_only=True)`` (:func:`read_checkpoint`)
keeps the pickle inside from running any; what is left is the network class a checkpoint
names in ``hyper_parameters._class_path``: LightningCLI and ``load_from_checkpoint`` build
the model from it, and resolving a dotted name imports its module, which runs that
module's code. So a checkpoint's class is looked up here among what is already imported
(the project's networks, and the network the user's config or command line named, which
the parser imported), never imported, and refused unless it is a :class:`PhoneModel`.
Its other hyperparameters must be arguments of that class, and name no classes at all
(the project's networks take plain values): no ``class_path``, and no string for an
argument typed as a callable, a class or a type, which jsonargparse would import.
"""

from __future__ import annotations

import collections.abc
import enum
import inspect
import re
import sys
import typing
import zipfile
from argparse import ArgumentError
from contextlib import contextmanager
from pathlib import Path, PurePath
from typing import Any, Iterator, Literal, Optional

import torch

from timit_lit.callbacks.resume import CHECKPOINT_KEY
from timit_lit.errors import InputError
from timit_lit.lightning_api import CLI_HPARAM_KEYS

# Networks' class paths before the package layout of issue 19, as checkpoints saved then name
# them in hyper_parameters._class_path, and where those classes are now.
MOVED_CLASS_PATHS = {
    "timit_lit.model.PhoneModel": "timit_lit.models.PhoneModel",
    "timit_lit.model.PhoneClassifier": "timit_lit.models.PhoneClassifier",
    "timit_lit.recurrent.RecurrentPhoneClassifier": "timit_lit.models.RecurrentPhoneClassifier",
    "timit_lit.ensemble.CheckpointEnsemble": "timit_lit.models.CheckpointEnsemble",
}
# Hyperparameters that networks no longer take, as checkpoints saved before then carry them:
# steps_per_call was a data option linked into every network before it became the MLP's own.
RETIRED_HYPERPARAMETERS = {
    "timit_lit.models.RecurrentPhoneClassifier": ("steps_per_call",),
    "timit_lit.models.CheckpointEnsemble": ("steps_per_call",),
}


def find_last_checkpoint(root: Path, pattern: str = "*/checkpoints/last.ckpt") -> Optional[Path]:
    """The newest file matching ``pattern`` under ``root`` (e.g. ``lightning_logs``), by
    modification time.

    Modification time rather than the version number: a resumed run writes into its
    original, lower-numbered folder, so the checkpoint written last, not the folder made
    last, is the state of the run that was running last (Lightning's own ``last`` picks
    by modification time too).
    """
    candidates = [p for p in root.glob(pattern) if p.is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime_ns, default=None)


def find_hpc_checkpoint(root_dir: Path) -> Optional[Path]:
    """Lightning's ``hpc`` checkpoint: the highest ``hpc_ckpt_N.ckpt`` in the Trainer's
    ``default_root_dir``, written on SLURM's requeue signal."""
    numbered = {int(p.stem.split("_")[-1]): p for p in root_dir.glob("hpc_ckpt_*.ckpt") if p.stem.split("_")[-1].isdigit()}
    return numbered[max(numbered)] if numbered else None


def logger_version(checkpoint: dict, path: Path) -> Any:
    """The logger version the run that saved ``checkpoint`` wrote to: recorded by
    :class:`ResumeState`, or, for checkpoints saved before it existed, the
    ``version_N`` folder that holds ``checkpoints/last.ckpt``."""
    recorded = checkpoint.get(CHECKPOINT_KEY, {}).get("logger_version")
    if recorded is not None:
        return recorded
    folder = path.parent.parent.name
    return int(folder[len("version_") :]) if folder.startswith("version_") and folder[8:].isdigit() else folder


def first_logger(config):
    """The first logger's config (it decides the run folder): None or True for Lightning's
    default TensorBoardLogger, False for none, else a ``class_path`` / ``init_args`` namespace."""
    logger = config.trainer.logger
    if isinstance(logger, list):
        return logger[0] if logger else False
    return logger


def ckpt_path_last(config, asked: str = "last") -> Path:
    """What ``--ckpt_path last`` means: the newest ``last.ckpt`` of the runs kept where this
    config's logger keeps them (``lightning_logs/version_*/checkpoints/`` by default)."""
    name = f"{config.last_checkpoint.filename or 'last'}.ckpt"
    root = Path(config.trainer.default_root_dir or ".")
    logger = first_logger(config)
    if config.last_checkpoint.dirpath:
        where, pattern = Path(config.last_checkpoint.dirpath), name
    elif logger is False:  # no logger: Lightning writes to <default_root_dir>/checkpoints
        where, pattern = root / "checkpoints", name
    elif logger is None or logger is True:
        where, pattern = root / "lightning_logs", f"*/checkpoints/{name}"
    elif "init_args" in logger and logger.init_args.get("save_dir") is not None:
        where, pattern = Path(logger.init_args.save_dir) / (logger.init_args.get("name") or ""), f"*/checkpoints/{name}"
    else:
        raise InputError(f"--ckpt_path {asked}: cannot tell where {logger.class_path} keeps its runs; pass the checkpoint's path")
    found = find_last_checkpoint(where, pattern)
    if found is None:
        what = "to resume from (start without --ckpt_path" if asked == "last" else "of a run (train one first"
        raise InputError(f"{where}: --ckpt_path {asked} found no {pattern} {what}, or pass a checkpoint's path)")
    return found


def ckpt_path_hpc(config) -> Path:
    root = Path(config.trainer.default_root_dir or ".")
    found = find_hpc_checkpoint(root)
    if found is None:
        raise InputError(f"{root}: --ckpt_path hpc found no hpc_ckpt_N.ckpt (written on SLURM's requeue signal)")
    return found


def ckpt_path_best(config) -> Path:
    """What ``--ckpt_path best`` means: the best-``val/acc`` checkpoint of the newest run (the
    run whose ``last.ckpt`` ``--ckpt_path last`` finds), as its ``last.ckpt`` records it."""
    last = ckpt_path_last(config, asked="best")
    saved = read_checkpoint(last)[1].get("callbacks", {})
    monitor = config.checkpoint.monitor or "val/acc"
    recorded = next((state.get("best_model_path") for state in saved.values()
                     if isinstance(state, dict) and state.get("monitor") == monitor), None)
    if recorded:
        for candidate in (last.parent / Path(recorded).name, Path(recorded)):  # beside last.ckpt if the run moved
            if candidate.is_file():
                return candidate
    raise InputError(f"{last.parent}: --ckpt_path best: the newest run has no best-{monitor} checkpoint "
                     f"(was it trained without validation? use --ckpt_path last, or pass a checkpoint's path)")


# ckpt_path values that Lightning resolves itself rather than reading a file.
_SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")


def read_checkpoint(path) -> Optional[tuple[str, dict]]:
    """The path and contents of a checkpoint file, checked: read without
    unpickling code, and naming no network but a known one (:func:`checkpoint_network`). None
    for no path and for Lightning's special values such as ``best``, which it resolves itself."""
    if not path or path in _SPECIAL_CKPT_PATHS or str(path).startswith("registry:"):
        return None
    if not Path(path).is_file():
        raise InputError(f"{path}: checkpoint file not found")
    _check_zip(path)
    try:
        # Read whole, not memory-mapped: torch then checks each tensor against the size of its
        # zip member, where a map would read past a short one into the next (or past the end).
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        if "Weights only load failed" in str(error):  # torch refused a pickled object: say what, not "retry unsafely"
            found = re.search(r"GLOBAL (\S+)", str(error))
            raise InputError(f"{path}: not a readable checkpoint: it holds a pickled object "
                             f"{found.group(1) if found else '(not a tensor or plain value)'}, "
                             f"and checkpoints are read as weights only") from None
        raise InputError(f"{path}: not a readable checkpoint ({type(error).__name__}: {error})") from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise InputError(f"{path}: not a Lightning checkpoint (no state_dict)")
    weights = checkpoint["state_dict"]
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise InputError(f"{path}: damaged checkpoint (its state_dict is not a mapping of names to tensors)")
    if not isinstance(checkpoint.get("datamodule_hyper_parameters", {}), dict):
        raise InputError(f"{path}: damaged checkpoint (its datamodule_hyper_parameters is not a mapping)")
    _update_old_hyperparameters(checkpoint.get("hyper_parameters"))
    checkpoint_network(str(path), checkpoint)  # before anything resolves the class it names
    return str(path), checkpoint


def _update_old_hyperparameters(hparams) -> None:
    """A checkpoint saved by an older timit_lit, in place: its network's class path as it is
    now (:data:`MOVED_CLASS_PATHS`), without the hyperparameters it no longer takes
    (:data:`RETIRED_HYPERPARAMETERS`)."""
    if not isinstance(hparams, dict) or not isinstance(hparams.get("_class_path"), str):
        return
    hparams["_class_path"] = MOVED_CLASS_PATHS.get(hparams["_class_path"], hparams["_class_path"])
    for key in RETIRED_HYPERPARAMETERS.get(hparams["_class_path"], ()):
        hparams.pop(key, None)


def _check_zip(path) -> None:
    """A checkpoint's members checked against their CRCs: torch reads tensors without
    checking, so a damaged byte in a shared file would silently change the weights."""
    if not zipfile.is_zipfile(path):
        return  # torch.load says what it is not
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except Exception as error:  # zipfile raises several types for a damaged archive
        raise InputError(f"{path}: damaged checkpoint ({type(error).__name__}: {error})") from None
    if bad is not None:
        raise InputError(f"{path}: damaged checkpoint ({bad} does not match its checksum)")


# Keys LightningCLI adds to the hyperparameters it saves; load_from_checkpoint allows only its own instantiator.
_LIGHTNING_KEYS = CLI_HPARAM_KEYS  # timit_lit.lightning_api


def imported_object(dotted: str) -> Any:
    """What ``dotted`` (``package.module.Name``) names, if its module is already imported;
    else None. Imports nothing and calls no module ``__getattr__`` (which may import)."""
    parts = dotted.split(".")
    for split in range(len(parts) - 1, 0, -1):
        found = sys.modules.get(".".join(parts[:split]))
        if found is None:
            continue
        for name in parts[split:]:
            found = getattr(found, "__dict__", {}).get(name)
        return found
    return None


def checkpoint_network(path: str, checkpoint: dict) -> Optional[type]:
    """The network class ``checkpoint`` names, checked (None if it names none); its
    hyperparameters checked against it. Raises InputError naming the file."""
    hparams = checkpoint.get("hyper_parameters", {})
    if not isinstance(hparams, dict) or not all(isinstance(key, str) for key in hparams):
        raise InputError(f"{path}: hyper_parameters is not a mapping of names to values")
    for where, name in _class_paths(hparams, "hyper_parameters"):
        if where != "hyper_parameters._class_path":
            raise InputError(f"{path}: {where} names a class ({name!r}); a checkpoint may name only its network")
    if "_class_path" not in hparams:
        return None
    class_path = hparams["_class_path"]
    from timit_lit.models import PhoneModel  # here, not above: the ensemble (in models) reads its members here

    network = imported_object(class_path) if isinstance(class_path, str) else None
    if not (isinstance(network, type) and issubclass(network, PhoneModel)):
        raise InputError(f"{path}: names the network {class_path!r}, which is not a PhoneModel known here (a "
                         f"checkpoint's class is never imported; name your own network as model.class_path)")
    parameters = inspect.signature(network.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        unknown = [key for key in hparams if key not in parameters and key not in _LIGHTNING_KEYS]
        if unknown:
            raise InputError(f"{path}: hyper_parameters.{unknown[0]} is not an argument of {class_path}")
    for key, value in hparams.items():
        if key in _LIGHTNING_KEYS or not _holds_text(value):
            continue
        typed = _argument_type(network, key)
        if _resolved_by_import(typed):
            raise InputError(f"{path}: hyper_parameters.{key} is {value!r}, for an argument typed {_type_name(typed)}, "
                             f"which would import what it names; a checkpoint may name only its network")
    return network


def _argument_type(network: type, name: str) -> Any:
    """The annotation of ``network``'s argument ``name``, or of the parent's that its ``**kwargs``
    pass it on to, as jsonargparse finds it; ``inspect.Parameter.empty`` if untyped or not an
    argument, None if the annotation cannot be evaluated."""
    for cls in network.__mro__:
        if "__init__" not in vars(cls):
            continue
        try:
            parameters = inspect.signature(cls.__init__, eval_str=True).parameters
        except Exception:  # an annotation that names what its module does not define
            return None if name in inspect.signature(cls.__init__).parameters else inspect.Parameter.empty
        if name in parameters:
            return parameters[name].annotation
        if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            break
    return inspect.Parameter.empty


# Types whose values jsonargparse takes as given (or looks up by name, as an Enum's), never importing.
_PLAIN_TYPES = (str, int, float, bool, bytes, type(None), enum.Enum, PurePath)


def _resolved_by_import(annotation: Any) -> bool:
    """Whether jsonargparse, given a string for an argument of this type, may import the
    dotted name it holds: a callable, a class or a type anywhere in the annotation (or an
    annotation that cannot be evaluated)."""
    if annotation is None:
        return True
    if annotation is inspect.Parameter.empty or annotation is Any:
        return False
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return False
    if origin is not None:  # Union, Optional, list[...], tuple[...], Callable[...], type[...]
        if origin in (collections.abc.Callable, type):
            return True
        return any(_resolved_by_import(arg) for arg in typing.get_args(annotation) if arg is not Ellipsis)
    return not (isinstance(annotation, type) and issubclass(annotation, _PLAIN_TYPES))


def _holds_text(value: Any) -> bool:
    """Whether a saved value is, or holds, a string."""
    if isinstance(value, str):
        return True
    if isinstance(value, dict):
        return any(_holds_text(v) for v in value.values())
    return isinstance(value, (list, tuple)) and any(_holds_text(v) for v in value)


def _type_name(annotation: Any) -> str:
    if annotation is None:
        return "(an annotation that does not evaluate)"
    return getattr(annotation, "__name__", None) if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def _class_paths(value: Any, where: str) -> Iterator[tuple[str, Any]]:
    """``(place, class name)`` for every class path in a checkpoint's nested values."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("class_path", "_class_path"):
                yield f"{where}.{key}", item
            yield from _class_paths(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _class_paths(item, f"{where}[{i}]")


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


def parse_error_reason(error: ArgumentError) -> str:
    """jsonargparse's multi-line report cut to its innermost ``key: reason`` (nested unions
    repeat the outer keys)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    keys = [i for i, line in enumerate(lines[:-1]) if line.startswith("Parser key")]
    if not keys:
        return lines[0] if lines else "rejected"
    key = lines[keys[-1]][len("Parser key"):].strip().strip(':"').removeprefix("module.")  # load_from_checkpoint's
    return f"{key}: {lines[keys[-1] + 1]}"


@contextmanager
def one_line_parse_errors(parser, path: str) -> Iterator[None]:
    """Values from the checkpoint at ``path`` that ``parser`` rejects give one InputError
    naming the file and the value, rather than jsonargparse's usage and multi-line report."""
    exit_on_error, parser.exit_on_error = parser.exit_on_error, False
    try:
        yield
    except ArgumentError as error:
        raise InputError(f"{path}: a saved hyperparameter does not parse: {parse_error_reason(error)}") from None
    finally:
        parser.exit_on_error = exit_on_error

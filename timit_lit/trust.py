"""Checkpoints from others: taken as data, never as code.

Checkpoints travel (students share them, ensembles take other people's), so nothing read
from one may run code. ``torch.load(weights_only=True)`` (:func:`timit_lit.resume.read_checkpoint`)
keeps the pickle inside from running any; what is left is the network class a checkpoint
names in ``hyper_parameters._class_path``: LightningCLI and ``load_from_checkpoint`` build
the model from it, and resolving a dotted name imports its module, which runs that
module's code. So a checkpoint's class is looked up here among what is already imported
(the project's networks, and the network the user's config or command line named, which
the parser imported), never imported, and refused unless it is a :class:`PhoneModel`.
Its other hyperparameters must be arguments of that class, and name no classes at all
(the project's networks take plain values).
"""

from __future__ import annotations

import inspect
import sys
from argparse import ArgumentError
from contextlib import contextmanager
from typing import Any, Iterator, Optional

from timit_lit.data import InputError
from timit_lit.model import PhoneModel

# Keys LightningCLI adds to the hyperparameters it saves; load_from_checkpoint allows only its own instantiator.
_LIGHTNING_KEYS = ("_class_path", "_instantiator")


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
    network = imported_object(class_path) if isinstance(class_path, str) else None
    if not (isinstance(network, type) and issubclass(network, PhoneModel)):
        raise InputError(f"{path}: names the network {class_path!r}, which is not a PhoneModel known here (a "
                         f"checkpoint's class is never imported; name your own network as model.class_path)")
    parameters = inspect.signature(network.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        unknown = [key for key in hparams if key not in parameters and key not in _LIGHTNING_KEYS]
        if unknown:
            raise InputError(f"{path}: hyper_parameters.{unknown[0]} is not an argument of {class_path}")
    return network


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

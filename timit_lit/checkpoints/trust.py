"""Trusting a checkpoint: it may name its network, and nothing else that would run code.

Checkpoints travel (students share them, ensembles take other people's), so nothing read
from one may run code. ``torch.load(weights_only=True)`` (:func:`~timit_lit.checkpoints.read_checkpoint`)
keeps the pickle inside from running any; what is left is the network class a checkpoint
names in ``hyper_parameters._class_path``: LightningCLI and ``load_from_checkpoint`` build
the model from it, and resolving a dotted name imports its module, which runs that
module's code. So a checkpoint's class is looked up here among what is already imported
(the project's networks, once ``timit_lit.models`` is imported, and the network the user's
config or command line named, which the parser imported), never imported, and refused
unless it is a ``PhoneModel``. Its other hyperparameters must be arguments of that class,
and name no classes at all (the project's networks take plain values): no ``class_path``,
and no string for an argument typed as a callable, a class or a type, which jsonargparse
would import.

This module imports no network either: the networks read checkpoints (an ensemble its
members'), so ``PhoneModel`` too is looked up among what is imported. A class that is a
``PhoneModel`` has had ``PhoneModel``'s module imported.
"""

from __future__ import annotations

import collections.abc
import enum
import inspect
import sys
import typing
from pathlib import PurePath
from typing import Any, Iterator, Literal, Optional

from timit_lit.errors import InputError
from timit_lit.lightning_api import CLI_HPARAM_KEYS

# Where the networks' common class is defined (timit_lit/models/base.py).
PHONE_MODEL = "timit_lit.models.base.PhoneModel"
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
    phone_model = imported_object(PHONE_MODEL)  # None: no network is imported, so none is known here
    network = imported_object(class_path) if isinstance(class_path, str) else None
    if not (phone_model is not None and isinstance(network, type) and issubclass(network, phone_model)):
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

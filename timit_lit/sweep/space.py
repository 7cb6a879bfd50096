"""SPACE.yaml: what a sweep searches, read and checked before any trial trains.

The file names the metric and its direction, optionally Optuna's pruner and sampler (class
paths with init args, as configs name classes), and ``space:``, a mapping of dotted ``fit``
options to Optuna's distributions in Optuna's own words::

    metric: val/acc            # default
    direction: maximize        # default
    pruner: {class_path: MedianPruner, init_args: {n_warmup_steps: 1}}
    space:
      model.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      data.batch_size: {type: categorical, choices: [64, 256, 512]}
      model.hidden_sizes: {type: categorical, choices: [[1024, 512, 128], [2048, 1024, 512]]}

Anything wrong is an :class:`~timit_lit.errors.InputError` naming the file and the key.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from timit_lit.errors import InputError

DEFAULT_METRIC = "val/acc"
KEYS = ("metric", "direction", "pruner", "sampler", "space")
PLAIN_CHOICE = (type(None), bool, int, float, str)  # what Optuna's storages keep as they are


@dataclass
class Dimension:
    """One searched option: its dotted ``fit`` key and the distribution its values come from.
    Categorical choices that are not plain scalars (lists: ``model.hidden_sizes``) are kept
    by Optuna as their YAML text (``"[1024, 512, 128]"``), which storages and plots take,
    and read back into values here."""

    key: str
    distribution: BaseDistribution
    encoded: bool = False  # choices stored as YAML text

    def suggest(self, trial: optuna.Trial) -> Any:
        d = self.distribution
        if isinstance(d, CategoricalDistribution):
            return self.value(trial.suggest_categorical(self.key, d.choices))
        if isinstance(d, IntDistribution):
            return trial.suggest_int(self.key, d.low, d.high, step=d.step, log=d.log)
        return trial.suggest_float(self.key, d.low, d.high, step=d.step, log=d.log)

    def value(self, param: Any) -> Any:
        """The option's value from the parameter Optuna stores."""
        return yaml.safe_load(param) if self.encoded else param

    def samples(self) -> list:
        """Values that together try every choice, or a range's type (its low end: what a
        value must be is checked when the model or data is built, in each trial)."""
        d = self.distribution
        if isinstance(d, CategoricalDistribution):
            return [self.value(c) for c in d.choices]
        return [d.low]


@dataclass
class SearchSpace:
    path: Path
    metric: str
    direction: str
    pruner: optuna.pruners.BasePruner | None
    sampler: optuna.samplers.BaseSampler | None
    dimensions: list[Dimension]

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """The trial's value of every option, drawn by the study's sampler."""
        return {d.key: d.suggest(trial) for d in self.dimensions}

    def values(self, params: dict[str, Any]) -> dict[str, Any]:
        """The options' values of a trial Optuna has stored (its ``params``)."""
        return {d.key: d.value(params[d.key]) for d in self.dimensions if d.key in params}

    def probes(self) -> list[dict[str, Any]]:
        """A few sets of values that between them hold every choice and a value of every
        range: parsing ``fit`` with each finds an option or a value ``fit`` rejects."""
        samples = [d.samples() for d in self.dimensions]
        count = max([len(s) for s in samples] + [1])
        return [{d.key: s[i % len(s)] for d, s in zip(self.dimensions, samples)} for i in range(count)]

    def params_of(self, config: dict) -> dict[str, Any]:
        """The trial a config is, as Optuna stores its parameters: each option's value in
        ``config`` (a fit's whole config, as ``fit --print_config`` shows it), which the
        space's distribution must hold, else the key is named."""
        params = {}
        for d in self.dimensions:
            value = _lookup(config, d.key)
            if value is _MISSING:
                raise self.error(f"space: {d.key}", "--enqueue-config: the fit options do not set it")
            held = _held(d, value)
            if held is _MISSING:
                raise self.error(f"space: {d.key}", f"--enqueue-config: the fit options' value "
                                                    f"{_encode(value)} is not in the space ({_described(d)})")
            params[d.key] = held
        return params

    def error(self, key: str, message: str) -> InputError:
        return InputError(f"{self.path}: {key}: {message}")


_MISSING = object()


def _lookup(config: dict, key: str) -> Any:
    """``config``'s value of a dotted option; ``model.lr`` is also ``model: {init_args: {lr:}}``."""
    node: Any = config
    for part in key.split("."):
        if isinstance(node, dict) and part not in node and isinstance(node.get("init_args"), dict):
            node = node["init_args"]
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _held(d: Dimension, value: Any) -> Any:
    """``value`` as the parameter Optuna stores for ``d``, or _MISSING where ``d`` cannot draw it."""
    dist = d.distribution
    if isinstance(dist, CategoricalDistribution):
        param = _encode(value) if d.encoded else value
        same = [c for c in dist.choices if type(c) is type(param) and c == param]
        return same[0] if same else _MISSING
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _MISSING
    if isinstance(dist, IntDistribution) and (not isinstance(value, int) or (value - dist.low) % dist.step):
        return _MISSING
    if not dist.low <= value <= dist.high:
        return _MISSING
    if isinstance(dist, FloatDistribution):
        if dist.step is not None and abs(round((value - dist.low) / dist.step) * dist.step - (value - dist.low)) > 1e-8:
            return _MISSING
        return float(value)
    return value


def _described(d: Dimension) -> str:
    dist = d.distribution
    if isinstance(dist, CategoricalDistribution):
        return "choices " + ", ".join(map(str, dist.choices))
    step = f" in steps of {dist.step}" if dist.step not in (None, 1) else ""
    return f"{dist.low} to {dist.high}{step}"


def _encode(value: Any) -> str:
    """A value as one line of YAML flow style: a choice's stored text, an option's command-line value."""
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 30).removesuffix("\n...\n").strip()


def fit_arguments(values: dict[str, Any]) -> list[str]:
    """``--key value`` for each option, as typed on a command line (YAML flow style)."""
    args = []
    for key, value in values.items():
        args += [f"--{key}", value if isinstance(value, str) else _encode(value)]
    return args


def as_config(values: dict[str, Any]) -> dict[str, Any]:
    """The dotted options as the nested mapping a ``--config`` file holds (``model.lr`` ->
    ``model: {lr: ...}``; a config that names ``model.class_path`` takes them the same way)."""
    config: dict[str, Any] = {}
    for key, value in values.items():
        *parents, name = key.split(".")
        node = config
        for parent in parents:
            node = node.setdefault(parent, {})
        node[name] = value
    return config


def load_space(path: str | Path) -> SearchSpace:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise InputError(f"{path}: cannot read the space file ({error.strerror or error})") from None
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise InputError(f"{path}: not valid YAML{line}") from None
    if not isinstance(spec, dict):
        raise InputError(f"{path}: a space file is a mapping (metric, direction, pruner, sampler, space), "
                         f"not {type(spec).__name__ if spec is not None else 'empty'}")
    unknown = sorted(set(spec) - set(KEYS), key=str)
    if unknown:
        raise InputError(f"{path}: {unknown[0]}: not a key of a space file (it takes {', '.join(KEYS)})")
    metric = spec.get("metric", DEFAULT_METRIC)
    if not isinstance(metric, str) or not metric:
        raise InputError(f"{path}: metric: the name of a logged metric (e.g. val/acc), not {metric!r}")
    direction = spec.get("direction", "maximize")
    if direction not in ("maximize", "minimize"):
        raise InputError(f"{path}: direction: maximize or minimize, not {direction!r}")
    pruner = _instance(path, "pruner", spec.get("pruner"), optuna.pruners, optuna.pruners.BasePruner)
    sampler = _instance(path, "sampler", spec.get("sampler"), optuna.samplers, optuna.samplers.BaseSampler)
    space = spec.get("space")
    if not isinstance(space, dict) or not space:
        raise InputError(f"{path}: space: a mapping of dotted fit options to distributions "
                         f"(e.g. model.lr: {{type: float, low: 1.0e-4, high: 1.0e-2, log: true}})")
    dimensions = [_dimension(path, key, spec) for key, spec in space.items()]
    return SearchSpace(path, metric, direction, pruner, sampler, dimensions)


def _instance(path: Path, key: str, spec: Any, module, base: type):
    """An Optuna pruner or sampler from ``{class_path, init_args}`` (or a bare class path);
    short names are looked up in ``optuna.pruners`` / ``optuna.samplers``."""
    if spec is None:
        return None
    if isinstance(spec, str):
        spec = {"class_path": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("class_path"), str) or set(spec) - {"class_path", "init_args"}:
        raise InputError(f"{path}: {key}: a mapping of class_path and init_args (e.g. "
                         f"{{class_path: {'MedianPruner' if key == 'pruner' else 'TPESampler'}, init_args: {{...}}}})")
    class_path = spec["class_path"]
    init_args = spec.get("init_args") or {}
    if not isinstance(init_args, dict):
        raise InputError(f"{path}: {key}.init_args: a mapping of the class's arguments, not {init_args!r}")
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name) if module_name else module, name)
    except (ImportError, AttributeError, ValueError):
        raise InputError(f"{path}: {key}: no class {class_path} (e.g. optuna.{module.__name__.split('.')[-1]}."
                         f"{'MedianPruner' if key == 'pruner' else 'TPESampler'})") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise InputError(f"{path}: {key}: {class_path} is not an Optuna {key} ({base.__module__}.{base.__name__})")
    try:
        return cls(**init_args)
    except (TypeError, ValueError) as error:
        raise InputError(f"{path}: {key}.init_args: {class_path} rejects them: {error}") from None


def _dimension(path: Path, key: Any, spec: Any) -> Dimension:
    where = f"{path}: space: {key}"
    if not isinstance(key, str) or not key or key.startswith("-") or " " in key:
        raise InputError(f"{path}: space: {key!r} is not a dotted fit option (e.g. model.lr)")
    if not isinstance(spec, dict) or "type" not in spec:
        raise InputError(f"{where}: a distribution, e.g. {{type: float, low: 0.0, high: 0.5}}, "
                         f"{{type: int, low: 2, high: 5}} or {{type: categorical, choices: [64, 256]}}")
    kind = spec["type"]
    allowed = {"float": {"low", "high", "log", "step"}, "int": {"low", "high", "log", "step"},
               "categorical": {"choices"}}
    if kind not in allowed:
        raise InputError(f"{where}: type must be float, int or categorical, not {kind!r}")
    extra = sorted(set(spec) - allowed[kind] - {"type"}, key=str)
    if extra:
        raise InputError(f"{where}: a {kind} distribution takes {', '.join(sorted(allowed[kind]))}, not {extra[0]}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise InputError(f"{where}: choices must be a non-empty list, not {choices!r}")
        encoded = not all(isinstance(c, PLAIN_CHOICE) for c in choices)
        if encoded:
            choices = [_encode(c) for c in choices]
        if len(set(map(repr, choices))) < len(choices):
            raise InputError(f"{where}: choices must differ, {spec['choices']!r} repeats one")
        return Dimension(key, CategoricalDistribution(choices), encoded)
    number = float if kind == "float" else int
    bounds = {}
    for name in ("low", "high"):
        bounds[name] = _number(where, name, spec.get(name), number)
    step = spec.get("step")
    if step is not None:
        step = _number(where, "step", step, number)
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise InputError(f"{where}: log must be true or false, not {log!r}")
    try:
        if kind == "float":
            return Dimension(key, FloatDistribution(bounds["low"], bounds["high"], log=log, step=step))
        return Dimension(key, IntDistribution(bounds["low"], bounds["high"], log=log, step=1 if step is None else step))
    except ValueError as error:
        raise InputError(f"{where}: {' '.join(str(error).split())}") from None


def _number(where: str, name: str, value: Any, number: type):
    if value is None:
        raise InputError(f"{where}: {name} is missing")
    if number is float and isinstance(value, str):
        try:  # YAML reads 1e-4 (no dot) as text
            return float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float) if number is float else int):
        raise InputError(f"{where}: {name} must be {'a number' if number is float else 'an integer'}, not {value!r}")
    return number(value)

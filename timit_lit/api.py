"""The command line, called from Python: a notebook or a script gets what ``python -m timit_lit``
does (the same configs, forced callbacks, checkpoints, CSV and metrics) and what the run made
back as values.

    import timit_lit
    fit = timit_lit.run("fit", config="configs/demo.yaml", trainer={"max_epochs": 2})
    fit.best_checkpoint, fit.best_score, fit.metrics["val/acc"]
    out = timit_lit.run("predict", config="configs/demo.yaml", ckpt_path=fit.best_checkpoint)
    out.predictions["Class"]          # the CSV's columns, as arrays

Options are the command line's, as keywords: a dict per group (``data={"data_dir": "timit_11"}``
is ``--data.data_dir timit_11``), or dotted keys (``**{"model.lr": 1e-3}``); a value is given to
the parser as the command line would give it (lists and dicts as JSON). docs/api.md.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from timit_lit.cli import TimitCLI, build_cli, input_error
from timit_lit.errors import InputError
from timit_lit.summary import run_checkpoints

SUBCOMMANDS = ("fit", "validate", "test", "predict")
PathLike = Union[str, os.PathLike]


@dataclass
class RunResult:
    """What one command made.

    Attributes:
        subcommand: ``fit``, ``validate``, ``test`` or ``predict``.
        metrics: the last values of every logged metric (``val/acc``, ``test/per``, ...), as floats.
        best_checkpoint: fit: the best-``val/acc`` checkpoint (without validation, the last
            epoch's); what ``--ckpt_path best`` finds afterwards.
        best_score: fit: its ``val/acc`` (None without validation).
        last_checkpoint: fit: ``last.ckpt``, what ``--ckpt_path last`` resumes.
        ckpt_path: the checkpoint the command started from or evaluated (None for a fresh fit).
        log_dir: the run folder it logged to (its TensorBoard events; None for predict).
        prediction_path: predict: the CSV written.
        predictions: predict: the CSV's columns (``Id``, ``Class``, ``Phone`` if asked) as arrays,
            ready for ``pandas.DataFrame(result.predictions)``.
        cli: the :class:`~timit_lit.cli.TimitCLI`, for its ``trainer``, ``model`` and ``datamodule``.
    """

    subcommand: str
    metrics: dict[str, float]
    best_checkpoint: Optional[Path] = None
    best_score: Optional[float] = None
    last_checkpoint: Optional[Path] = None
    ckpt_path: Optional[Path] = None
    log_dir: Optional[Path] = None
    prediction_path: Optional[Path] = None
    predictions: Optional[dict[str, np.ndarray]] = None
    cli: Optional[TimitCLI] = field(default=None, repr=False)

    @property
    def trainer(self):
        return self.cli.trainer

    @property
    def model(self):
        return self.cli.model

    @property
    def datamodule(self):
        return self.cli.datamodule

    def scalars(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The run's TensorBoard scalars: ``{tag: (steps, values)}`` (``val/acc``, ``train/loss``, ...)."""
        events = self._events()
        return {tag: (np.array([e.step for e in events.Scalars(tag)]), np.array([e.value for e in events.Scalars(tag)]))
                for tag in events.Tags()["scalars"]}

    def image(self, tag: str = "val/confusion") -> bytes:
        """The PNG of the run's last TensorBoard image ``tag`` (``val/confusion``, ``val/phone_acc``,
        ``val/segments``), e.g. for ``IPython.display.Image``."""
        events = self._events(images=True)
        if tag not in events.Tags()["images"]:
            raise InputError(f"{self.log_dir}: no {tag} image (it is drawn after each validation: a run without "
                             f"validation, or with figures.enabled false, has none)")
        return events.Images(tag)[-1].encoded_image_string

    def _events(self, images: bool = False):
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        if self.log_dir is None:
            raise InputError(f"{self.subcommand} logged nothing (no TensorBoard run folder)")
        return EventAccumulator(str(self.log_dir), size_guidance={"images": 0} if images else None).Reload()


def run(
    subcommand: str,
    config: Union[PathLike, Sequence[PathLike], None] = None,
    *,
    args: Sequence[str] = (),
    **options: Any,
) -> RunResult:
    """Run ``python -m timit_lit SUBCOMMAND`` in this process and return what it made.

    Args:
        subcommand: ``fit``, ``validate``, ``test`` or ``predict``.
        config: a config file, or several layered in order (``--config A --config B``).
        args: more command-line arguments as strings, after the options.
        **options: the command line's options: ``trainer={"max_epochs": 2}``,
            ``model={"lr": 1e-3}``, ``ckpt_path="best"``, or dotted keys.

    Raises:
        InputError: bad input (a missing file, an option the network does not take, a value
            outside an option's choices, ...), with the one-line message the CLI prints.
    """
    if subcommand not in SUBCOMMANDS:
        raise InputError(f"subcommand {subcommand!r}: expected one of {', '.join(SUBCOMMANDS)}")
    configs = [] if config is None else [config] if isinstance(config, (str, os.PathLike)) else list(config)
    argv = [subcommand]
    for path in configs:
        argv += ["--config", os.fspath(path)]
    argv += command_line_options(options) + list(args)
    try:
        cli = build_cli(argv)
    except (InputError, ValueError) as error:
        cause = input_error(error)
        if cause is None:
            raise
        raise cause.with_traceback(None) from None
    return _result(subcommand, cli)


def command_line_options(options: dict[str, Any], prefix: str = "") -> list[str]:
    """``{"trainer": {"max_epochs": 2}, "ckpt_path": "best"}`` as ``["--trainer.max_epochs=2",
    "--ckpt_path=best"]``. A dict is split into its keys, except one that names a class
    (``class_path``), which is given whole as JSON, as are lists."""
    argv = []
    for key, value in options.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and "class_path" not in value:
            argv += command_line_options(value, prefix=f"{name}.")
        else:
            argv.append(f"--{name}={_value(value)}")
    return argv


def _value(value: Any) -> str:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, str):
        return value
    if isinstance(value, (tuple, np.ndarray)):
        value = list(np.asarray(value).tolist()) if isinstance(value, np.ndarray) else list(value)
    return json.dumps(value)  # true / false / null, numbers, lists and dicts as YAML reads them


def _result(subcommand: str, cli: TimitCLI) -> RunResult:
    trainer = cli.trainer
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items() if value.numel() == 1}
    result = RunResult(subcommand, metrics, cli=cli)
    if trainer.ckpt_path:
        result.ckpt_path = Path(trainer.ckpt_path)
    if subcommand != "predict" and trainer.loggers:
        result.log_dir = Path(trainer.log_dir) if trainer.log_dir else None
    if subcommand == "fit":
        best_callback, best, last = run_checkpoints(trainer)
        result.best_checkpoint = Path(best) if best else last
        result.last_checkpoint = last
        if best_callback is not None and best_callback.monitor and best_callback.best_model_score is not None:
            result.best_score = float(best_callback.best_model_score)
    if subcommand == "predict":
        writer = cli.forced_callback("prediction")
        result.prediction_path = writer.output_path
        result.predictions = writer.written
    return result

"""The command line: ``python -m timit_lit {fit,validate,test,predict} --config ...``.

LightningCLI builds every option from the signatures of :class:`TimitDataModule`, the
network chosen as ``model.class_path`` (any :class:`~timit_lit.models.PhoneModel`, by
default the MLP :class:`~timit_lit.models.PhoneClassifier`) and the Trainer. On top of it this module adds what every run of
this task needs whatever the config says: the best-``val/acc`` checkpoint plus
``last.ckpt``, the CSV writer for ``predict``, the TensorBoard extras of
:mod:`timit_lit.callbacks.monitoring`, the input width and class count linked from the data into
the model, and one-line errors for bad input.
"""

from __future__ import annotations

import signal
import sys
import warnings
from argparse import ArgumentError
from collections.abc import Sequence
from pathlib import Path

from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser
from pytorch_lightning.plugins import TorchCheckpointIO
from pytorch_lightning.plugins.environments import SLURMEnvironment
from pytorch_lightning.utilities.exceptions import SIGTERMException
from pytorch_lightning.utilities.rank_zero import rank_zero_info

from timit_lit.callbacks import (
    AtomicCheckpointIO,
    CsvPredictionWriter,
    CudaMatmulPrecision,
    EpochLearningRate,
    EpochThroughput,
    LastCheckpoint,
    PhoneDecoding,
    PhoneErrorEvaluation,
    ResumeState,
    RunConfig,
    ValidationFigures,
    ViterbiEvaluation,
)
from timit_lit.callbacks.connect import EVALUATIONS, connect_evaluations
from timit_lit.checkpoints import ckpt_path_best, ckpt_path_hpc, ckpt_path_last, logger_version, one_line_parse_errors, read_checkpoint
from timit_lit.data import TimitDataModule
from timit_lit.default_logger import default_logger, first_logger, make_default_logger, uses_default_logger
from timit_lit.errors import InputError, option_error_line
from timit_lit.lightning_api import CheckpointHparamsCLI, checkpoint_logged_step, set_logged_step, set_subcommand_help
from timit_lit.models import CheckpointEnsemble, PhoneModel, RecurrentPhoneClassifier
from timit_lit.models.base import STATISTICS_BUFFERS
from timit_lit.models.ensemble import ensemble_data_settings
from timit_lit.runtime import process_group_left_on_exit, quiet_known_warnings, return_large_buffers_to_the_os
from timit_lit.summary import fit_summary

# Imported so that their short names work on the command line (--model RecurrentPhoneClassifier).
NETWORKS = (PhoneModel, RecurrentPhoneClassifier, CheckpointEnsemble)

DESCRIPTION = ("Framewise phone classification on TIMIT (NTU ML2021 HW2-1) with PyTorch Lightning. "
               "Start with: fit --config configs/demo.yaml (generated data, no download). "
               "A search over recipes: sweep --space SPACE.yaml FIT_OPTIONS (Optuna; docs/sweeps.md).")
# `--help`'s line for each subcommand (LightningCLI's would be the Trainer docstring's first line, cut short).
SUBCOMMAND_HELP = {
    "fit": "Train a network (best and last checkpoints kept).",
    "validate": "Score a checkpoint on the validation split.",
    "test": "Score a checkpoint on the labelled test set.",
    "predict": "Write prediction.csv from a checkpoint.",
}
# What `fit --help` says first: where the network's own options are (they are not listed below it).
FIT_DESCRIPTION = (
    "Train a network. Its own options (lr, hidden_sizes, activation, ...) are not listed below: "
    "`fit --model.help PhoneClassifier` lists the MLP's (the default network), "
    "`fit --model.help RecurrentPhoneClassifier` the BiLSTM's; docs/configs.md has the options used most."
)
# Each subcommand's usage line, instead of one that lists its hundreds of options.
USAGE = "%(prog)s [-h] [-c CONFIG] [--print_config] [--ckpt_path CKPT_PATH] [--GROUP.OPTION VALUE ...]"


class TimitCLI(CheckpointHparamsCLI):
    def setup_parser(self, add_subcommands: bool, main_kwargs: dict, subparser_kwargs: dict) -> None:
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        if add_subcommands:
            set_subcommand_help(self.parser, SUBCOMMAND_HELP)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Forced callbacks: a config that lists trainer.callbacks cannot drop them.
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.filename": "epoch={epoch:02d}-val_acc={val/acc:.4f}",
                "checkpoint.auto_insert_metric_name": False,  # "val/acc" holds a "/"
            }
        )
        # last.ckpt after every epoch and on SIGTERM, for resuming. Not `save_last` above: since
        # Lightning 2.6 that only copies the best checkpoint whenever a new best is saved.
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")
        parser.set_defaults(
            {
                "last_checkpoint.filename": "last",
                "last_checkpoint.monitor": None,
                "last_checkpoint.enable_version_counter": False,
            }
        )
        parser.add_lightning_class_args(CsvPredictionWriter, "prediction")
        # TensorBoard: learning rate, frames/s and validation figures (timit_lit.callbacks.monitoring).
        parser.add_lightning_class_args(EpochLearningRate, "lr_monitor")
        parser.set_defaults({"lr_monitor.logging_interval": "epoch"})
        parser.add_lightning_class_args(EpochThroughput, "throughput")
        parser.add_lightning_class_args(ValidationFigures, "figures")
        # Viterbi decoding scored in validate / test (off by default; timit_lit.callbacks.viterbi).
        parser.add_lightning_class_args(ViterbiEvaluation, "decoding")
        # The phone-level decoder, likewise (off by default; timit_lit.callbacks.phone_decoding).
        parser.add_lightning_class_args(PhoneDecoding, "phone_decoding")
        # Phone error rate and boundary / inner-frame accuracy in validate / test (timit_lit.callbacks.phone_errors).
        parser.add_lightning_class_args(PhoneErrorEvaluation, "phone_errors")
        # float32 matmul precision on a CUDA device (TF32 with `high`; configs/gpu.yaml), none elsewhere.
        parser.add_lightning_class_args(CudaMatmulPrecision, "cuda_matmul")
        # The network: PhoneClassifier (the notebook's MLP and its variants) unless the config
        # names another PhoneModel as model.class_path; plain `model:` options apply to it.
        parser.set_defaults({"model": {"class_path": "timit_lit.models.PhoneClassifier"}})
        parser.link_arguments("data.input_dim", "model.init_args.input_dim", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        # The options as typed, for the commands fit prints when it ends (none from a dict or Namespace).
        self._command_line = sys.argv[1:] if args is None else list(args) if isinstance(args, (list, tuple)) else []
        # The parsers raise instead of printing their usage and multi-line report (main()'s
        # parser_kwargs): what they reject is said in one line.
        try:
            self._parse_and_resolve(parser, args)
        except ArgumentError as error:
            raise InputError(option_error_line(error)) from None

    def _parse_and_resolve(self, parser: LightningArgumentParser, args) -> None:
        super().parse_arguments(parser, args)
        # Lightning reads the checkpoint's hyperparameters right after parsing: resolve
        # `last` / `best` / `hpc` and check the file first.
        subcommand = self.config.get("subcommand")
        self._checkpoint = None
        if not subcommand:
            return
        config = self.config[subcommand]
        asked = config.get("ckpt_path")
        if asked in ("last", "best", "hpc"):
            find = {"last": ckpt_path_last, "best": ckpt_path_best, "hpc": ckpt_path_hpc}[asked]
            config.ckpt_path = str(find(config))
            rank_zero_info(f"timit_lit: --ckpt_path {asked} is {config.ckpt_path}")
        self._checkpoint = read_checkpoint(config.ckpt_path)
        if config.model.class_path == "timit_lit.models.CheckpointEnsemble":
            # The data its members need (the same from any of its checkpoints as from ckpt_path).
            data = ensemble_data_settings(config.model.init_args.checkpoints)
            self.config = parser.parse_object({subcommand: {"data": data}}, self.config)
        if self._checkpoint is None:
            return
        path, checkpoint = self._checkpoint
        # What defines the model's input comes from the checkpoint, as Lightning does for the model.
        saved = checkpoint.get("datamodule_hyper_parameters", {})
        data = {key: saved[key] for key in TimitDataModule.MODEL_DEFINING if key in saved}
        if data:
            with one_line_parse_errors(parser, path):
                self.config = parser.parse_object({subcommand: {"data": data}}, self.config)
        if subcommand == "fit" and asked in ("last", "hpc"):
            self._continue_logging(subcommand, logger_version(checkpoint, Path(path)))
        if subcommand in ("validate", "test"):
            self._log_into_run(subcommand, Path(path))

    def model_from_checkpoint(self) -> None:
        """Lightning's step that takes the model's class and arguments from the checkpoint's
        hyper_parameters (timit_lit.lightning_api), done from the file parse_arguments has read
        and checked (timit_lit.checkpoints), with a value that does not parse reported in one line."""
        if self._checkpoint is None:
            return
        path, checkpoint = self._checkpoint
        hparams = {k: v for k, v in checkpoint.get("hyper_parameters", {}).items() if k != "_instantiator"}
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        if hparams:
            with one_line_parse_errors(self.parser, path):
                self.config = self.parser.parse_object({self.config.subcommand: {"model": hparams}}, self.config)

    def _continue_logging(self, subcommand: str, version) -> None:
        """Make the resumed run log into the version folder of the run it continues, so its
        curves go on where they stopped (TensorBoard reads every event file of a folder)."""
        config = self.config[subcommand]
        logger = first_logger(config)
        if uses_default_logger(config):
            # The default logger, as instantiate_trainer makes it, with the version set. The same
            # save_dir string matters: ModelCheckpoint reloads its best-k state only for the same dirpath.
            default = default_logger(config.trainer.default_root_dir, version=version)
            self.config = self.parser.parse_object({subcommand: {"trainer": {"logger": default}}}, self.config)
        elif "init_args" in logger and "version" in logger.init_args:
            logger.init_args.version = version
        # config.yaml stays the one that started the run (the resume is exact, so it reproduces
        # the whole run); the resuming command's config goes beside it.
        self.save_config_kwargs = {**self.save_config_kwargs, "config_filename": "config_resume.yaml"}
        # Expected when resuming into the run's own folder.
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")

    def _log_into_run(self, subcommand: str, checkpoint: Path) -> None:
        """Log an evaluation of a run's checkpoint into that run's own folder, so TensorBoard
        shows its ``test/*`` (or ``val/*``) beside the run's curves. A checkpoint outside a
        TensorBoard run folder (``<run>/checkpoints/x.ckpt``, event files in ``<run>``), or
        another logger than TensorBoard, leaves Lightning's choice: a new version folder."""
        run = checkpoint.resolve().parent.parent
        if checkpoint.parent.name != "checkpoints" or not any(run.glob("events.out.tfevents.*")):
            return
        config = self.config[subcommand]
        logger = first_logger(config)
        save_dir, place = str(run.parent.parent), {"name": run.parent.name, "version": run.name}
        if uses_default_logger(config):  # the default logger, in the run's folder
            default = default_logger(save_dir, **place)
            self.config = self.parser.parse_object({subcommand: {"trainer": {"logger": default}}}, self.config)
        elif logger is not False and logger.class_path.endswith("TensorBoardLogger"):
            logger.init_args.update(save_dir=save_dir, **place)
        else:
            return
        # The run's config.yaml stays the fit's; this command's goes beside it.
        self.save_config_kwargs = {**self.save_config_kwargs, "config_filename": f"config_{subcommand}.yaml"}
        self._evaluated_step = checkpoint_logged_step(self._checkpoint[1])

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config  # run=False: no subcommand
        if config.data.val_ratio == 0 and config.checkpoint.monitor == "val/acc":
            # No validation: keep the latest epoch rather than wait for a metric that never comes.
            config.checkpoint.monitor = None
            config.checkpoint.filename = "epoch={epoch:02d}"
        if config.data.val_ratio == 0 and self.subcommand == "fit":
            # Nothing to validate, so no validation loop (Lightning would warn about its empty loader).
            config.trainer.limit_val_batches = 0
        if self.subcommand in ("validate", "test", "predict"):
            # Configs for these (ensemble.yaml) set no epochs, and Lightning warns about it anyway.
            warnings.filterwarnings("ignore", message=r".*`max_epochs` was not set.*")
            # Callback states (best-k scores) of a checkpoint matter to a fit only: an evaluation
            # need not repeat the training's checkpoint settings (e.g. val_ratio 0's, no monitor).
            warnings.filterwarnings("ignore", message=r".*callbacks used to create the checkpoint need to be provided.*")
        if self.subcommand == "predict":
            # predict logs nothing (it writes the CSV): no logger, so no empty version_N folder.
            config.trainer.logger = False

    def instantiate_trainer(self, **kwargs):
        """The Trainer, with this project's default logger (:mod:`timit_lit.default_logger`)
        where Lightning would make its own: the SLURM job id as version, as Lightning's."""
        trainer = (self.config_init[self.subcommand] if self.subcommand else self.config_init)["trainer"]
        if trainer.get("logger") in (None, True) and not trainer.get("barebones"):
            kwargs.setdefault("logger", make_default_logger(trainer.get("default_root_dir"), version=SLURMEnvironment.job_id()))
        trainer = super().instantiate_trainer(**kwargs)
        connect_evaluations({key: self.forced_callback(key) for key in (*EVALUATIONS, "prediction")}, trainer,
                            predicting=self.subcommand == "predict")
        return trainer

    def forced_callback(self, key: str) -> Callback:
        """The forced callback of the CLI group ``key`` (``prediction``, ``decoding``, ...), as in the Trainer's callbacks."""
        return (self.config_init[self.subcommand] if self.subcommand else self.config_init)[key]

    def after_instantiate_classes(self) -> None:
        if type(self.trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # not one the config chose
            self.trainer.strategy.checkpoint_io = AtomicCheckpointIO()

    def _check_checkpoint_fits(self) -> None:
        """A checkpoint from another network or data width gets a clear error, not a state_dict dump."""
        if self._checkpoint is None:
            return
        path, saved = self._checkpoint[0], self._checkpoint[1]["state_dict"]
        for name, tensor in self.model.state_dict().items():
            if name.rsplit(".", 1)[-1] in STATISTICS_BUFFERS and name not in saved:
                continue  # a checkpoint from before they were buffers (PhoneModel.on_load_checkpoint)
            if name not in saved or saved[name].shape != tensor.shape:
                found = tuple(saved[name].shape) if name in saved else "missing"
                raise InputError(
                    f"{path}: checkpoint does not fit this model and data: {name} is {found} in the checkpoint, "
                    f"{tuple(tensor.shape)} here (data: {self.datamodule.input_dim} features, "
                    f"{self.datamodule.num_classes} classes)"
                )

    def _before_evaluation(self) -> None:
        self._check_checkpoint_fits()
        step = getattr(self, "_evaluated_step", None)
        if step is not None:
            # Lightning logs validate / test results at the fit loop's step count, which it
            # restores only when fitting: put them at the checkpoint's step of the run's curves.
            set_logged_step(self.trainer, step)

    before_validate = before_test = _before_evaluation

    def before_fit(self) -> None:
        self._check_checkpoint_fits()

    def after_fit(self) -> None:
        if self.trainer.is_global_zero:
            print("\n".join(fit_summary(self.trainer, self._command_line)), flush=True)

    def before_predict(self) -> None:
        self._check_checkpoint_fits()
        return_large_buffers_to_the_os()


def build_cli(args: list[str] | None, callbacks: Sequence[Callback] = ()) -> TimitCLI:
    """Run one command (``["fit", "--config", ...]``) as ``python -m timit_lit`` does, raising
    instead of exiting: :class:`InputError` (or jsonargparse's ValueError caused by one) for bad
    input. ``None`` reads ``sys.argv``. ``callbacks`` are added to the Trainer's (the sweep's
    trials report to Optuna with one: timit_lit.sweep). :func:`main` and :func:`timit_lit.api.run` call it."""
    quiet_known_warnings()
    with process_group_left_on_exit():
        return TimitCLI(
            PhoneModel,
            TimitDataModule,
            subclass_mode_model=True,
            args=args,
            seed_everything_default=0,
            save_config_callback=RunConfig,
            save_config_kwargs={"overwrite": True},
            # Always present, whatever the config's trainer.callbacks: RNG states in every checkpoint.
            trainer_defaults={"callbacks": [ResumeState(), *callbacks]},
            # Parse errors raise (TimitCLI.parse_arguments says them in one line), on every subcommand's parser.
            parser_kwargs={
                "exit_on_error": False, "prog": _prog(), "description": DESCRIPTION,
                **{name: {"exit_on_error": False, "usage": USAGE} for name in TimitCLI.subcommands()},
                "fit": {"exit_on_error": False, "usage": USAGE, "description": FIT_DESCRIPTION},
            },
        )


def input_error(error: BaseException) -> InputError | None:
    """The InputError behind ``error``: jsonargparse reports one raised while it builds the
    model (an ensemble loading its members) as the cause of its own multi-line ValueError."""
    while error is not None and not isinstance(error, InputError):
        error = error.__cause__
    return error


def main(args: list[str] | None = None, callbacks: Sequence[Callback] = ()) -> TimitCLI:
    """Entry point of ``python -m timit_lit`` and ``timit-lit``: ``args`` (the command line
    without the program, ``["fit", "--config", "configs/demo.yaml"]``), or ``sys.argv[1:]``
    where the process is this command. Bad input: one line on stderr, exit status 2. From
    Python, :func:`timit_lit.run` returns what the command made instead."""
    if args is None and _argv_is_not_ours():
        print("timit_lit: error: main() in a notebook has no command line of its own to read: pass the "
              "arguments, main(['fit', '--config', 'configs/demo.yaml']), or call timit_lit.run('fit', ...)",
              file=sys.stderr)
        raise SystemExit(2)
    try:
        command = sys.argv[1:] if args is None else list(args)
        if command[:1] == ["sweep"]:
            return _sweep(command[1:])
        return build_cli(args, callbacks)
    except (InputError, ValueError) as error:
        cause = input_error(error)
        if cause is None:
            raise
        print(f"timit_lit: error: {' '.join(str(cause).split())}", file=sys.stderr)
        raise SystemExit(getattr(cause, "exit_code", 2)) from None
    except SIGTERMException:
        # Lightning stops after the current batch; exit as a process killed by SIGTERM would.
        print("timit_lit: stopped by SIGTERM", file=sys.stderr)
        raise SystemExit(128 + signal.SIGTERM) from None


def _sweep(args: list[str]) -> None:
    """``python -m timit_lit sweep``: Optuna, an optional dependency, imported only here."""
    try:
        from timit_lit.sweep import sweep
    except ModuleNotFoundError as error:
        if error.name != "optuna":
            raise
        raise InputError('sweep needs Optuna: pip install -e ".[sweep]"') from None
    sweep(args, fit=main)


def _argv_is_not_ours() -> bool:
    """In IPython or a Jupyter kernel, sys.argv is the shell's or the kernel's own
    (``ipykernel_launcher.py -f .../kernel-N.json``), unless it runs this command (``%run -m timit_lit``)."""
    ipython = sys.modules.get("IPython")
    if ipython is None or getattr(ipython, "get_ipython", lambda: None)() is None:
        return False
    return Path(sys.argv[0]).name not in ("__main__.py", "timit-lit")


def _prog() -> str:
    """The command as the user typed it, for ``usage:`` lines."""
    return "timit-lit" if Path(sys.argv[0]).name == "timit-lit" else "python -m timit_lit"

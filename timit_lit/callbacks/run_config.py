"""The run's config: written into its folder, and shown in TensorBoard's HParams tab with its best ``val/acc``."""

from __future__ import annotations

from typing import Any

import yaml
from pytorch_lightning import LightningModule, Trainer
from pytorch_lightning.cli import SaveConfigCallback

from timit_lit.callbacks.monitoring import tensorboard_logger

BEST_METRIC = "hp/best_val_acc"


class RunConfig(SaveConfigCallback):
    """LightningCLI's ``SaveConfigCallback`` (writes the run's ``config.yaml`` into its folder),
    which for ``fit`` also puts that same config in TensorBoard's HParams tab, with the run's
    best ``val/acc`` as the metric ``hp/best_val_acc``, logged again whenever it improves.

    The HParams entry is written at the first validation, so a run without validation has
    none. The best value is kept in checkpoints, so a resumed run goes on from it.
    ``default_hp_metric`` must be off on the TensorBoardLogger (it is on the CLI's default
    logger), or Lightning adds a second, metric-less entry for the run.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.best: float | None = None
        self._stage: str | None = None
        self._hparams_logged = False

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Without a logger (predict, or --trainer.logger false) there is no run folder: Lightning's
        # log_dir would be default_root_dir, the working directory, where it would overwrite a
        # config.yaml of the user's own.
        if stage != "predict" and trainer.loggers:
            super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._stage = stage  # called on rank 0 only, as the rest of this callback's work

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        tensorboard = tensorboard_logger(trainer)
        value = trainer.callback_metrics.get("val/acc")
        if self._stage != "fit" or trainer.sanity_checking or tensorboard is None or value is None:
            return
        value = float(value)
        improved = self.best is None or value > self.best
        if improved:
            self.best = value
        if not self._hparams_logged:
            config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))  # = config.yaml
            model = config.get("model")
            if isinstance(model, dict) and "init_args" in model:  # model/lr rather than model/init_args/lr
                config["model"] = {"class_path": model.get("class_path"), **model["init_args"]}
            tensorboard.log_hyperparams(config, {BEST_METRIC: self.best}, step=trainer.global_step)
            self._hparams_logged = True
        elif improved:
            tensorboard.log_metrics({BEST_METRIC: self.best}, step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"best_val_acc": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict.get("best_val_acc")

"""timit_lit.lightning_api against the installed Lightning: each use of its private API does
what the project needs, or fails here, by name, when a Lightning release changes it."""

import random

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from timit_lit import lightning_api


class Tiny(pl.LightningModule):
    """A linear model on random data; with ``own_steps`` it takes that many raw optimizer steps per batch."""

    def __init__(self, own_steps: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Linear(4, 2)
        self.automatic_optimization = own_steps == 0

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.automatic_optimization:
            loss = torch.nn.functional.cross_entropy(self.net(x), y)
            self.log("loss", loss)
            return loss
        optimizer = self.optimizers().optimizer  # the torch optimizer, which Lightning does not count
        for _ in range(self.hparams.own_steps):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(self.net(x), y).backward()
            optimizer.step()
        lightning_api.count_own_optimizer_steps(self.trainer, self.hparams.own_steps)
        return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,))), batch_size=2)


def _fit(model, tmp_path, **kwargs):
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, default_root_dir=tmp_path, enable_progress_bar=False,
                         enable_model_summary=False, logger=False, **kwargs)
    trainer.fit(model)
    return trainer


def test_logged_step_is_the_fits_batch_count_and_is_saved_in_checkpoints(tmp_path):
    trainer = _fit(Tiny(), tmp_path, limit_train_batches=3, enable_checkpointing=False)
    assert lightning_api.logged_step(trainer) == 3
    trainer.save_checkpoint(tmp_path / "x.ckpt")
    checkpoint = torch.load(tmp_path / "x.ckpt", weights_only=True)
    assert lightning_api.checkpoint_logged_step(checkpoint) == 3
    assert lightning_api.checkpoint_logged_step({}) is None
    lightning_api.set_logged_step(trainer, 7)
    assert lightning_api.logged_step(trainer) == 7


def test_own_optimizer_steps_count_in_global_step_and_in_the_logged_step(tmp_path):
    trainer = _fit(Tiny(own_steps=3), tmp_path, limit_train_batches=2, enable_checkpointing=False)
    assert trainer.global_step == 6
    assert lightning_api.logged_step(trainer) == 6


def test_moved_optimizer_steps_carry_global_step_across_modes(tmp_path):
    model = Tiny()
    trainer = _fit(model, tmp_path, limit_train_batches=2, enable_checkpointing=False)
    assert trainer.global_step == 2
    model.automatic_optimization = False
    assert trainer.global_step == 0  # Lightning reads the manual counter now
    lightning_api.move_optimizer_steps(trainer, to_manual=True)
    assert trainer.global_step == 2
    model.automatic_optimization = True
    lightning_api.move_optimizer_steps(trainer, to_manual=False)
    assert trainer.global_step == 2


def test_is_fitting_only_while_a_trainer_fits_the_module(tmp_path):
    class Seen(Callback):
        fitting: list = []

        def on_train_start(self, trainer, pl_module):
            self.fitting.append(lightning_api.is_fitting(pl_module))

        def on_validation_start(self, trainer, pl_module):
            self.fitting.append(lightning_api.is_fitting(pl_module))

    model = Tiny()
    model.val_dataloader = model.train_dataloader
    model.validation_step = lambda batch, batch_idx: None
    assert not lightning_api.is_fitting(model)  # attached to no trainer (LightningModule.trainer would raise)
    trainer = _fit(model, tmp_path, limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=0,
                   enable_checkpointing=False, callbacks=[Seen()])
    trainer.validate(model, verbose=False)
    assert Seen.fitting == [True, True, False]  # fit's training and validation, then validate's


def test_every_n_train_steps():
    assert lightning_api.every_n_train_steps(ModelCheckpoint(every_n_train_steps=5)) == 5
    assert lightning_api.every_n_train_steps(ModelCheckpoint()) == 0
    assert lightning_api.every_n_train_steps(Callback()) == 0


def test_rng_states_restore_every_generator():
    states = lightning_api.collect_rng_states()
    assert {"torch", "numpy", "python"} <= set(states)
    first = (torch.rand(3), np.random.rand(3), random.random())
    lightning_api.set_rng_states(states)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


class Recording(lightning_api.CheckpointHparamsCLI):
    calls: list = []

    def parse_arguments(self, parser, args):
        self.calls.append("parse_arguments")
        super().parse_arguments(parser, args)

    def model_from_checkpoint(self):
        self.calls.append("model_from_checkpoint")

    def before_instantiate_classes(self):
        self.calls.append("before_instantiate_classes")


def test_lightning_cli_reads_the_checkpoint_hparams_between_parsing_and_instantiating():
    Recording.calls = []
    cli = Recording(Tiny, subclass_mode_model=True, run=False, args=["--model", "test_lightning_api.Tiny",
                                                                      "--model.own_steps", "2"])
    assert Recording.calls == ["parse_arguments", "model_from_checkpoint", "before_instantiate_classes"]
    # What LightningCLI adds to the model's saved hyperparameters, besides its own arguments.
    assert set(cli.model.hparams) == {"own_steps", *lightning_api.CLI_HPARAM_KEYS}
    assert cli.model.hparams["_class_path"] == "test_lightning_api.Tiny"


def test_subcommand_help_lines_are_replaced():
    from pytorch_lightning.cli import LightningArgumentParser

    parser = LightningArgumentParser()
    subcommands = parser.add_subcommands()
    for name in ("fit", "test"):
        subcommands.add_subcommand(name, LightningArgumentParser(), help=f"Lightning's {name} line")
    lightning_api.set_subcommand_help(parser, {"fit": "Train a network."})
    text = parser.format_help()
    assert "Train a network." in text and "Lightning's fit line" not in text and "Lightning's test line" in text

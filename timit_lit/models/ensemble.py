"""Ensembles: several trained checkpoints as one model whose posteriors are their average.

Networks trained apart make partly different mistakes; averaging their class posteriors
frame by frame (before any decoding) is the simplest way to combine them. Members may be
of any kind (MLPs of different context widths, recurrent models): the data module serves
what the most demanding member needs (the widest context; utterance batches if any member
takes them), and each member gets its own view of the batch: its window width cut from
the centre of each frame's wider window (the same frames: windows are clipped at
utterance edges frame by frame), and every frame of an utterance batch as a row for a
frame classifier (the padding's rows ignored).

Used from the command line with ``validate``, ``test`` or ``predict``:

    python -m timit_lit test --config configs/ensemble.yaml --model.checkpoints '[A.ckpt, B.ckpt]'
"""

from __future__ import annotations

import inspect
import io
from argparse import ArgumentError

import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_warn
from torch import nn

from timit_lit.checkpoints import checkpoint_network, parse_error_reason, read_checkpoint
from timit_lit.data import TimitDataModule
from timit_lit.errors import InputError
from timit_lit.models.base import IGNORED, PhoneModel
from timit_lit.models.mlp import PhoneClassifier

# What an ensemble takes from its members' data settings: what defines their input, and the split.
MEMBER_SETTINGS = (*TimitDataModule.MODEL_DEFINING, "split", "split_seed", "val_ratio")


def member_data_settings(path: str, checkpoint: dict) -> dict:
    """The data settings a checkpoint's model was trained with (TimitDataModule's defaults
    for any it does not record), each of its default's type."""
    saved = checkpoint.get("datamodule_hyper_parameters", {})
    defaults = inspect.signature(TimitDataModule).parameters
    settings = {key: saved.get(key, defaults[key].default) for key in MEMBER_SETTINGS}
    for key, value in settings.items():
        kind = type(defaults[key].default)  # int, float or str
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else kind):
            raise InputError(f"{path}: damaged checkpoint (datamodule_hyper_parameters.{key} is {value!r}, "
                             f"not {kind.__name__})")
    return settings


def served_to_members(members: list[tuple[str, int]]) -> tuple[str, int]:
    """``(batch_by, context)`` that serve members taking ``(batch_by, context)`` each: utterance
    batches if any member takes them, and the widest context (each member cuts its own from it)."""
    batch_by = "utterances" if any(by == "utterances" for by, _ in members) else "rows"
    return batch_by, max(context for _, context in members)


def ensemble_data_settings(paths: list[str]) -> dict:
    """The data settings that serve every member: the widest context, utterance batches if any
    member takes them, and the first member's validation split (``validate`` scores the
    ensemble there; say so when members were validated on different splits). All members
    must predict the same classes."""
    if not paths:
        raise InputError("model.checkpoints is empty: list the checkpoints to ensemble")
    settings = {path: member_data_settings(*read_checkpoint(path)) for path in paths}
    classes = {s["num_classes"] for s in settings.values()}
    if len(classes) > 1:
        detail = ", ".join(f"{p}: {s['num_classes']}" for p, s in settings.items())
        raise InputError(f"ensemble members predict different numbers of classes ({detail})")
    splits = {tuple(s[key] for key in ("split", "split_seed", "val_ratio")) for s in settings.values()}
    if len(splits) > 1:
        rank_zero_warn("ensemble members were validated on different splits: the ensemble's val/acc includes rows "
                       "that some members trained on (test/acc is unaffected)")
    first = settings[paths[0]]
    batch_by, context = served_to_members([(s["batch_by"], s["context"]) for s in settings.values()])
    return {
        "split": first["split"], "split_seed": first["split_seed"], "val_ratio": first["val_ratio"],
        "num_classes": classes.pop(), "context": context, "batch_by": batch_by,
    }


def load_member(path: str) -> PhoneModel:
    """A trained model from its checkpoint, of the class it was trained as, for inference."""
    path, checkpoint = read_checkpoint(path)  # its class checked, not imported (timit_lit.checkpoints.trust)
    model_class = checkpoint_network(path, checkpoint) or PhoneClassifier
    if model_class is CheckpointEnsemble:
        raise InputError(f"{path}: holds an ensemble, not a trained phone model")
    try:
        # Built from the checkpoint as read_checkpoint read and updated it (a checkpoint saved by an
        # older timit_lit may name a module that no longer exists, or carry a retired hyperparameter).
        saved = io.BytesIO()
        torch.save(checkpoint, saved)
        saved.seek(0)
        model = model_class.load_from_checkpoint(saved, map_location="cpu", weights_only=True)
    except ArgumentError as error:
        raise InputError(f"{path}: a saved hyperparameter does not parse: {parse_error_reason(error)}") from None
    except Exception as error:
        raise InputError(f"{path}: cannot load its model ({type(error).__name__}: {error})") from error
    model.context = member_data_settings(path, checkpoint)["context"]
    return model.eval()


class CheckpointEnsemble(PhoneModel):
    """The average of the class posteriors of several trained checkpoints.

    Its "logits" are the log of the averaged posteriors, so its softmax is the average,
    its cross-entropy the ensemble's, and Viterbi decoding and the CSV writer take it as
    any model. An ensemble of one checkpoint is that checkpoint (tested).

    Args:
        checkpoints: paths of the members' checkpoints (``.ckpt`` written by ``fit``).
        input_dim: features per input row (linked from the data, which the CLI sets up
            for the members: :func:`ensemble_data_settings`).
        num_classes: phone classes (linked from the data).
    """

    def __init__(self, checkpoints: list[str], input_dim: int = 429, num_classes: int = 39):
        super().__init__(num_classes, lr=0.0)
        self.save_hyperparameters()
        self.members = nn.ModuleList(load_member(path) for path in checkpoints)
        if not self.members:
            raise InputError("model.checkpoints is empty: list the checkpoints to ensemble")
        # As ensemble_data_settings serves them (the CLI sets the data up with it).
        self.batch_by, self.context = served_to_members([(m.batch_by, m.context) for m in self.members])
        # What the data serves per frame: context frames of FRAME_DIMS features, or (context 11)
        # the file's own rows, whose width may be anything.
        self.frame_dims = input_dim // self.context
        # Viterbi decoding of the average uses the phone statistics of the first member that has them.
        self.phone_statistics = next((m.phone_statistics for m in self.members if m.phone_statistics is not None), None)

    def _member_batch(self, member: PhoneModel, batch):
        """The batch as ``member`` takes it: its context width, rows or utterances. A frame
        classifier gets every frame slot of an utterance batch as a row, padding included
        (ignored: its target is IGNORED), so that every member's rows are the same frames."""
        x, targets = batch[0], batch[1]
        if member.context != self.context:  # the centre member.context frames of each window
            first = (self.context - member.context) // 2 * self.frame_dims
            x = x[..., first : first + member.context * self.frame_dims]
        if self.batch_by == "utterances" and member.batch_by == "rows":
            lengths = batch[2].to(x.device)
            padding = torch.arange(x.shape[1], device=x.device)[None, :] >= lengths[:, None]
            return x.flatten(0, 1), targets.masked_fill(padding, IGNORED).flatten()
        return (x, targets, *batch[2:])

    def frame_logits(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        posteriors, targets = 0.0, None
        for member in self.members:
            logits, targets = member.frame_logits(self._member_batch(member, batch))
            posteriors = posteriors + logits.float().softmax(dim=1)  # averaged in float32, whatever the precision
        return (posteriors / len(self.members)).clamp_min(1e-30).log(), targets

    def on_fit_start(self) -> None:
        raise InputError("model CheckpointEnsemble combines trained checkpoints: use it with validate, test or predict")

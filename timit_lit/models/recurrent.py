"""A bidirectional recurrent network (LSTM or GRU) over whole utterances, and what every
network over whole utterances shares (:class:`UtterancePhoneModel`).

The MLP sees a fixed window of frames around each one; a bidirectional recurrent layer
sees the whole utterance, from both ends, and learns how far to look. It needs batches of
utterances rather than of rows: ``data.batch_by: utterances`` (see
:class:`timit_lit.data.UtteranceDataset`), which pads the utterances of a batch to the
longest, padding after each utterance's last frame.

Each bidirectional layer is two unidirectional layers: one reads the batch as it is, the
other reads each utterance reversed within its own length (padding stays at the end), and
its output is reversed back. Both therefore meet an utterance's real frames before any
padding, so the padding never changes a real frame's output; loss, accuracy and
predictions then take the real frames only (padding's targets are ignored;
tests/test_recurrent.py). This is what
``pack_padded_sequence`` with a bidirectional ``nn.LSTM`` computes, but faster on CPU
(measured by ``benchmarks/recurrent.py``; figures in docs/sequence-models.md): unpacked
unidirectional layers take oneDNN's fused RNN kernels, packed sequences and the
bidirectional layer do not.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from timit_lit.errors import InputError
from timit_lit.models.base import IGNORED, PhoneModel

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}


class UtterancePhoneModel(PhoneModel):
    """What the networks over whole padded utterances share (``data.batch_by: utterances``):
    their training options (``frames_per_step``, SpecAugment-style masks, label smoothing,
    distillation, phase averaging), how a padded batch becomes frames' logits with the
    padding's targets IGNORED, frames stacked into steps, and AdamW with a one-cycle
    schedule. A subclass builds its network, saves its hyperparameters (``lr``,
    ``weight_decay``, ``schedule`` and ``warmup`` among them, for the optimizer), and defines
    ``forward(x, lengths)``: logits ``utterances x frames x classes``, where a padded frame
    never changes a real frame's logits. The options are documented with
    :class:`RecurrentPhoneClassifier`."""

    batch_by = "utterances"

    def __init__(self, num_classes: int, lr: float, frames_per_step: int, label_smoothing: float,
                 distillation_weight: float, time_masks: int, time_mask_frames: int, feature_masks: int,
                 feature_mask_dims: int, phase_average: bool):
        super().__init__(num_classes, lr)
        if frames_per_step < 1:
            raise InputError(f"model.frames_per_step must be >= 1, got {frames_per_step}")
        if not 0.0 <= label_smoothing < 1.0:
            raise InputError(f"model.label_smoothing must be in [0, 1), got {label_smoothing}")
        if not 0.0 <= distillation_weight <= 1.0:
            raise InputError(f"model.distillation_weight must be in [0, 1], got {distillation_weight}")
        self.label_smoothing, self.distillation_weight = label_smoothing, distillation_weight
        self.frames_per_step, self.num_classes = frames_per_step, num_classes
        self.phase_average = phase_average
        self.masking = InputMasking(time_masks, time_mask_frames, feature_masks, feature_mask_dims)

    def to_steps(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` with every frame past its utterance's end set to 0, so that its last, partly
        filled step, and any convolution's view past its end, are the same whatever the
        batch's padding; then ``frames_per_step`` consecutive frames stacked into each step
        (``utterances x steps x (k * features)``), and each utterance's length in steps."""
        k, (n_utterances, n_frames, _) = self.frames_per_step, x.shape
        real = torch.arange(n_frames, device=x.device)[None, :] < lengths[:, None]
        x = x.masked_fill(~real[:, :, None], 0.0)
        if k == 1:
            return x, lengths
        n_steps = -(-n_frames // k)
        x = F.pad(x, (0, 0, 0, n_steps * k - n_frames)).reshape(n_utterances, n_steps, -1)
        return x, (lengths + k - 1) // k

    def to_frames(self, logits: torch.Tensor, n_frames: int) -> torch.Tensor:
        """Each step's ``frames_per_step x classes`` logits as its frames' own rows:
        ``utterances x n_frames x classes``."""
        return logits.reshape(logits.shape[0], -1, self.num_classes)[:, :n_frames]

    def phase_averaged(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Log of the mean class posteriors of the ``frames_per_step`` groupings of frames into
        steps, as logits (``utterances x frames x classes``). Grouping ``s`` puts ``s`` zero
        frames (the features' mean) before each utterance, so its steps start ``s`` frames
        earlier; those frames' outputs are dropped. Each grouping errs on its own side of the
        steps' edges; their average smooths that out."""
        lengths = lengths.to(x.device)
        total = 0.0
        for shift in range(self.frames_per_step):
            logits = self(F.pad(x, (0, 0, shift, 0)), lengths + shift)[:, shift:]
            total = total + logits.softmax(dim=2)
        return (total / self.frames_per_step).log()

    def configure_optimizers(self):
        hp = self.hparams
        if hp.weight_decay:
            optimizer = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            optimizer = torch.optim.Adam(self.parameters(), lr=hp.lr)
        if hp.schedule == "constant":
            return optimizer
        # Lightning's recipe for OneCycleLR: the whole run's optimizer steps, known only once the trainer has the data.
        cycle = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=hp.lr, total_steps=self.trainer.estimated_stepping_batches,
                                                    pct_start=hp.warmup)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": cycle, "interval": "step"}}

    def frame_logits(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Every frame slot of the padded batch, utterance by utterance, frames in time order;
        the padding's targets are IGNORED (set from ``lengths``, whatever the batch holds there)."""
        x, targets, lengths = batch[:3]
        lengths = lengths.to(x.device)
        padding = torch.arange(x.shape[1], device=x.device)[None, :] >= lengths[:, None]
        if self.training:
            x = self.masking(x, lengths)
        averaged = self.phase_average and self.frames_per_step > 1 and not self.training
        logits = self.phase_averaged(x, lengths) if averaged else self(x, lengths)
        return logits.flatten(0, 1), targets.masked_fill(padding, IGNORED).flatten()

    def teacher_posteriors(self, batch):
        """The teacher's posteriors a training batch of utterances carries as its fourth part
        (``data.soft_targets``), one row per frame slot as :meth:`frame_logits` gives them."""
        return batch[3].flatten(0, 1) if len(batch) > 3 else None


class RecurrentPhoneClassifier(UtterancePhoneModel):
    """Bidirectional LSTM or GRU layers, then a linear layer to the phone logits, per frame.

    Args:
        input_dim: features per frame (linked from the data: ``context * 39``; with
            ``data.context: 1`` each step sees its centre frame only).
        num_classes: phone classes (linked from the data).
        cell: ``lstm`` or ``gru``.
        hidden_size: units per direction in each layer.
        num_layers: stacked bidirectional layers.
        dropout: dropout between layers and before the output layer (0: none).
        lr: Adam's learning rate; with ``schedule: one_cycle``, the peak of the cycle
            (``--optimizer`` on the command line replaces all three options).
        weight_decay: above 0, AdamW with this decoupled weight decay instead of Adam.
        schedule: ``constant`` learning rate, or ``one_cycle``: warm up from ``lr / 25``
            to ``lr`` over the first ``warmup`` of all training steps, then anneal to
            almost 0 by the last (``torch.optim.lr_scheduler.OneCycleLR``, stepped every
            batch; its length is the run's, from the trainer, whatever the data's size).
        warmup: the fraction of training steps that warm up, with ``one_cycle``.
        frames_per_step: consecutive frames that enter one recurrent step together, and
            whose logits leave it together: every frame keeps its own prediction, while
            the recurrent layers run ``frames_per_step`` times fewer steps (the cost of an
            epoch falls almost as much; a wider or deeper network can spend it). An
            utterance's last step is completed with zeros, never with another's frames.
        conv_channels: if above 0, a convolution over time (``conv_kernel`` steps, GELU,
            LayerNorm) turns each step's input into ``conv_channels`` features before the
            recurrent layers.
        conv_kernel: width of that convolution, in steps (odd).
        label_smoothing: of the training loss (validation and test report plain cross-entropy).
        distillation_weight: above 0, learn from a teacher's posteriors too
            (``data.soft_targets``, e.g. an ensemble's): the training loss is this weight
            times the cross-entropy against them plus ``1 -`` it times the labels' loss
            (:meth:`~timit_lit.models.PhoneModel.training_loss`).
        time_masks: training only: stretches of each utterance's input set to 0 (the
            features' mean), each up to ``time_mask_frames`` frames (SpecAugment's time masks).
        time_mask_frames: longest time mask, in frames.
        feature_masks: training only: bands of up to ``feature_mask_dims`` consecutive
            feature dimensions set to 0 over a whole utterance (SpecAugment's frequency masks).
        feature_mask_dims: widest feature mask.
        phase_average: with ``frames_per_step`` k > 1, evaluation and prediction (never
            training) average the class posteriors of the k groupings of frames into steps
            (the utterance shifted by 0..k-1 frames; :meth:`phase_averaged`): k forward
            passes. An evaluation setting, not saved in checkpoints: the command line or
            config decides it for each run.
    """

    batch_by = "utterances"

    def __init__(
        self,
        input_dim: int = 39,
        num_classes: int = 39,
        cell: Literal["lstm", "gru"] = "lstm",
        hidden_size: int = 256,
        num_layers: int = 3,
        dropout: float = 0.0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        schedule: Literal["constant", "one_cycle"] = "constant",
        warmup: float = 0.3,
        frames_per_step: int = 1,
        conv_channels: int = 0,
        conv_kernel: int = 5,
        label_smoothing: float = 0.0,
        distillation_weight: float = 0.0,
        time_masks: int = 0,
        time_mask_frames: int = 10,
        feature_masks: int = 0,
        feature_mask_dims: int = 8,
        phase_average: bool = False,
    ):
        super().__init__(num_classes, lr, frames_per_step, label_smoothing, distillation_weight,
                         time_masks, time_mask_frames, feature_masks, feature_mask_dims, phase_average)
        self.save_hyperparameters(ignore=["phase_average"])
        if conv_channels and conv_kernel % 2 == 0:
            raise InputError(f"model.conv_kernel must be odd (the convolution keeps the steps centred), got {conv_kernel}")
        step_input = frames_per_step * input_dim
        self.front = ConvFrontEnd(step_input, conv_channels, conv_kernel) if conv_channels else None
        widths = [conv_channels or step_input] + [2 * hidden_size] * (num_layers - 1)
        self.forward_layers = nn.ModuleList(CELLS[cell](n, hidden_size, batch_first=True) for n in widths)
        self.backward_layers = nn.ModuleList(CELLS[cell](n, hidden_size, batch_first=True) for n in widths)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * hidden_size, frames_per_step * num_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits ``utterances x frames x classes`` for padded ``x`` (``utterances x frames x
        features``) of the given real ``lengths``; padded frames' logits mean nothing."""
        n_frames, lengths = x.shape[1], lengths.to(x.device)
        if self.frames_per_step > 1 or self.front is not None:
            x, lengths = self.to_steps(x, lengths)
        h = x if self.front is None else self.front(x)
        reverse = _reversal_index(lengths, h.shape[1])
        for i, (ahead, back) in enumerate(zip(self.forward_layers, self.backward_layers)):
            if i:
                h = self.dropout(h)
            h_back = back(_reverse(h, reverse))[0]
            h = torch.cat([ahead(h)[0], _reverse(h_back, reverse)], dim=2)
        return self.to_frames(self.head(self.dropout(h)), n_frames)

class ConvFrontEnd(nn.Module):
    """Conv1d over time, GELU, LayerNorm: local patterns of neighbouring steps before the
    recurrent layers. Steps past an utterance's end are zeros (as an utterance alone would
    be padded), so a real step's output does not depend on the batch's padding."""

    def __init__(self, n_in: int, channels: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv1d(n_in, channels, kernel, padding=kernel // 2)
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(F.gelu(self.conv(x.transpose(1, 2)).transpose(1, 2)))


class InputMasking(nn.Module):
    """SpecAugment-style masks on a padded batch of utterances, drawn from torch's generator
    (so ``seed_everything`` fixes them): ``time_masks`` stretches of up to ``time_frames``
    frames and ``feature_masks`` bands of up to ``feature_dims`` dimensions, per utterance,
    set to 0. Inputs are standardised, so 0 is each feature's mean. Only real frames are
    masked; the caller applies it in training only."""

    def __init__(self, time_masks: int, time_frames: int, feature_masks: int, feature_dims: int):
        super().__init__()
        self.time_masks, self.time_frames = time_masks, time_frames
        self.feature_masks, self.feature_dims = feature_masks, feature_dims

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if not (self.time_masks or self.feature_masks):
            return x
        n_utterances, n_frames, n_features = x.shape
        keep = torch.ones(n_utterances, n_frames, n_features, dtype=torch.bool, device=x.device)
        frames = torch.arange(n_frames, device=x.device)[None, :]
        for _ in range(self.time_masks):
            width = torch.randint(0, self.time_frames + 1, (n_utterances, 1), device=x.device)
            start = (torch.rand(n_utterances, 1, device=x.device) * (lengths[:, None] - width).clamp(min=0)).long()
            keep &= ~((frames >= start) & (frames < start + width))[:, :, None]
        dims = torch.arange(n_features, device=x.device)[None, :]
        for _ in range(self.feature_masks):
            width = torch.randint(0, self.feature_dims + 1, (n_utterances, 1), device=x.device)
            start = (torch.rand(n_utterances, 1, device=x.device) * (n_features - width).clamp(min=0)).long()
            keep &= ~((dims >= start) & (dims < start + width))[:, None, :]
        return x * keep


def _reversal_index(lengths: torch.Tensor, n_frames: int) -> torch.Tensor:
    """``index[u, t]``: the frame that lands at ``t`` when utterance ``u`` is reversed within
    its length, padding left where it is (its own inverse)."""
    t = torch.arange(n_frames, device=lengths.device)[None, :]
    last = lengths[:, None] - 1
    return torch.where(t <= last, last - t, t)


def _reverse(h: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return h.gather(1, index[:, :, None].expand_as(h))

"""A Conformer encoder over whole utterances: self-attention, convolution and feed-forward blocks.

The recurrent network reads an utterance one step after another; self-attention lets every
step look at every other at once, so a layer is a few large matrix products over the whole
batch, parallel over time, rather than one small step after another; and it is a network
whose errors may differ from the BiLSTM's, an ensemble member that differs. Each
block is Gulati et al.'s Conformer (2020, "Conformer: Convolution-augmented Transformer
for Speech Recognition"), small:

    x + 1/2 FeedForward -> x + SelfAttention -> x + Convolution -> x + 1/2 FeedForward -> LayerNorm

Attention knows where steps are from a learned bias per head on each step-to-step
distance, clipped at ``max_distance`` steps (relative positions, shared by all layers, as
T5's): it depends on how far apart two steps are, never on where an utterance starts or
how long the batch is. The convolution module adds local patterns of neighbouring steps.

A padded step never changes a real step's output: attention never looks at padded keys
(their scores are set to -inf), the convolution sees zeros past an utterance's end (as an
utterance alone would), and every other operation is per step; LayerNorm rather than the
paper's BatchNorm in the convolution module, so no statistic is taken over the padding
either (tests/test_conformer.py checks each utterance alone against the padded batch).

Everything else, batches of utterances, ``frames_per_step``, masks, label smoothing,
distillation, phase averaging and the one-cycle AdamW, is :class:`UtterancePhoneModel`'s,
as for the recurrent network.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from timit_lit.errors import InputError
from timit_lit.models.recurrent import UtterancePhoneModel


class ConformerPhoneClassifier(UtterancePhoneModel):
    """A Conformer encoder over whole utterances, per frame phone logits.

    A linear layer from each step's frames to ``d_model`` features, ``num_layers``
    Conformer blocks, then a linear layer to the phone logits of each of the step's frames.

    Args:
        input_dim: features per frame (linked from the data: ``context * 39``).
        num_classes: phone classes (linked from the data).
        d_model: features per step inside the encoder.
        num_heads: attention heads (``d_model`` must be a multiple of them).
        num_layers: Conformer blocks.
        ff_multiplier: the feed-forward modules' hidden width, in multiples of ``d_model``.
        conv_kernel: width of the depthwise convolution, in steps (odd).
        max_distance: step-to-step distances beyond this many steps share one attention
            bias per head (relative positions).
        dropout: after the input layer, inside each module, on the attention weights, and
            before the output layer.
        lr: AdamW's learning rate; with ``schedule: one_cycle``, the peak of the cycle.
        weight_decay: above 0, AdamW with this decoupled weight decay instead of Adam.
        schedule: ``constant`` or ``one_cycle`` (warm up over ``warmup`` of the run's
            steps, then anneal), as :class:`~timit_lit.models.RecurrentPhoneClassifier`'s.
        warmup: the fraction of training steps that warm up, with ``one_cycle``.
        frames_per_step: consecutive frames stacked into one encoder step, each frame
            keeping its own logits: ``frames_per_step`` times fewer steps, and attention's
            cost, quadratic in them, falls by its square.
        label_smoothing: of the training loss (validation and test report plain cross-entropy).
        distillation_weight: above 0, learn from a teacher's posteriors too (``data.soft_targets``).
        time_masks: training only: stretches of each utterance's input set to 0, each up to
            ``time_mask_frames`` frames (SpecAugment's time masks).
        time_mask_frames: longest time mask, in frames.
        feature_masks: training only: bands of up to ``feature_mask_dims`` consecutive
            feature dimensions set to 0 over a whole utterance (SpecAugment's frequency masks).
        feature_mask_dims: widest feature mask.
        phase_average: with ``frames_per_step`` k > 1, evaluation and prediction average the
            posteriors of the k groupings of frames into steps (not saved in checkpoints).

    Each option that the recurrent network shares means the same as
    :class:`~timit_lit.models.RecurrentPhoneClassifier`'s.
    """

    def __init__(
        self,
        input_dim: int = 39,
        num_classes: int = 39,
        d_model: int = 144,
        num_heads: int = 4,
        num_layers: int = 6,
        ff_multiplier: int = 4,
        conv_kernel: int = 15,
        max_distance: int = 64,
        dropout: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        schedule: Literal["constant", "one_cycle"] = "constant",
        warmup: float = 0.3,
        frames_per_step: int = 1,
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
        if d_model % num_heads:
            raise InputError(f"model.d_model ({d_model}) must be a multiple of model.num_heads ({num_heads})")
        if conv_kernel % 2 == 0:
            raise InputError(f"model.conv_kernel must be odd (the convolution keeps the steps centred), got {conv_kernel}")
        if max_distance < 1:
            raise InputError(f"model.max_distance must be >= 1, got {max_distance}")
        self.input_layer = nn.Sequential(nn.Linear(frames_per_step * input_dim, d_model), nn.Dropout(dropout))
        self.positions = RelativePositionBias(num_heads, max_distance)
        self.blocks = nn.ModuleList(ConformerBlock(d_model, num_heads, ff_multiplier, conv_kernel, dropout)
                                    for _ in range(num_layers))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(d_model, frames_per_step * num_classes))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits ``utterances x frames x classes`` for padded ``x`` (``utterances x frames x
        features``) of the given real ``lengths``; padded frames' logits mean nothing."""
        n_frames = x.shape[1]
        x, lengths = self.to_steps(x, lengths.to(x.device))
        n_utterances, n_steps, _ = x.shape
        padding = torch.arange(n_steps, device=x.device)[None, :] >= lengths[:, None]  # utterances x steps
        # One additive attention mask for every layer: the heads' position biases, and -inf
        # on padded keys (never on every key of a row: an utterance has at least one step).
        scores = self.positions(n_steps)[None].masked_fill(padding[:, None, None, :], float("-inf"))
        attention_mask = scores.reshape(n_utterances * self.positions.num_heads, n_steps, n_steps)
        h = self.input_layer(x)
        for block in self.blocks:
            h = block(h, attention_mask, padding)
        return self.to_frames(self.head(h), n_frames)


class RelativePositionBias(nn.Module):
    """A learned score per head for each distance ``key step - query step``, clipped to
    ``[-max_distance, max_distance]``, added to attention's scores. Starts at 0: no
    preference until training finds one."""

    def __init__(self, num_heads: int, max_distance: int):
        super().__init__()
        self.num_heads, self.max_distance = num_heads, max_distance
        self.bias = nn.Embedding(2 * max_distance + 1, num_heads)
        nn.init.zeros_(self.bias.weight)

    def forward(self, n_steps: int) -> torch.Tensor:
        """``heads x steps x steps``: the bias of query step ``i`` on key step ``j``."""
        steps = torch.arange(n_steps, device=self.bias.weight.device)
        distance = (steps[None, :] - steps[:, None]).clamp(-self.max_distance, self.max_distance)
        return self.bias(distance + self.max_distance).permute(2, 0, 1)


class ConformerBlock(nn.Module):
    """Half a feed-forward module, self-attention, the convolution module, the other half
    feed-forward module, each residual around a LayerNorm first (pre-norm), then a LayerNorm."""

    def __init__(self, d_model: int, num_heads: int, ff_multiplier: int, conv_kernel: int, dropout: float):
        super().__init__()
        self.ff_in = FeedForward(d_model, ff_multiplier, dropout)
        self.attention_norm = nn.LayerNorm(d_model)
        self.attention = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.attention_dropout = nn.Dropout(dropout)
        self.convolution = ConvolutionModule(d_model, conv_kernel, dropout)
        self.ff_out = FeedForward(d_model, ff_multiplier, dropout)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, h: torch.Tensor, attention_mask: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        h = h + 0.5 * self.ff_in(h)
        a = self.attention_norm(h)
        h = h + self.attention_dropout(self.attention(a, a, a, attn_mask=attention_mask, need_weights=False)[0])
        h = h + self.convolution(h, padding)
        h = h + 0.5 * self.ff_out(h)
        return self.norm(h)


class FeedForward(nn.Sequential):
    """LayerNorm, a linear layer ``ff_multiplier`` times wider, SiLU, and back (the macaron halves)."""

    def __init__(self, d_model: int, ff_multiplier: int, dropout: float):
        super().__init__(nn.LayerNorm(d_model), nn.Linear(d_model, ff_multiplier * d_model), nn.SiLU(),
                         nn.Dropout(dropout), nn.Linear(ff_multiplier * d_model, d_model), nn.Dropout(dropout))


class ConvolutionModule(nn.Module):
    """LayerNorm, pointwise convolution (a linear layer per step) to twice the width and a
    GLU, depthwise convolution over ``kernel`` steps, LayerNorm, SiLU, pointwise
    convolution. Padded steps are set to
    0 before the depthwise convolution, so that it sees past an utterance's end what the
    utterance alone would (its zero padding)."""

    def __init__(self, d_model: int, kernel: int, dropout: float):
        super().__init__()
        self.norm_in = nn.LayerNorm(d_model)
        self.pointwise_in = nn.Linear(d_model, 2 * d_model)
        self.depthwise = nn.Conv1d(d_model, d_model, kernel, padding=kernel // 2, groups=d_model)
        self.norm = nn.LayerNorm(d_model)
        self.pointwise_out = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        h = F.glu(self.pointwise_in(self.norm_in(h)), dim=2)
        h = h.masked_fill(padding[:, :, None], 0.0)
        h = self.depthwise(h.transpose(1, 2)).transpose(1, 2)
        return self.dropout(self.pointwise_out(F.silu(self.norm(h))))

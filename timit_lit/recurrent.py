"""A bidirectional recurrent network (LSTM or GRU) over whole utterances.

The MLP sees a fixed window of frames around each one; a bidirectional recurrent layer
sees the whole utterance, from both ends, and learns how far to look. It needs batches of
utterances rather than of rows: ``data.batch_by: utterances`` (see
:class:`timit_lit.data.UtteranceDataset`), which pads the utterances of a batch to the
longest. The padding is packed away before the recurrent layers
(:func:`torch.nn.utils.rnn.pack_padded_sequence`), so the backward direction starts at
each utterance's real last frame, and loss, accuracy and predictions take the real frames
only: padding never changes a result (tests/test_recurrent.py).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from timit_lit.data import InputError
from timit_lit.model import PhoneModel

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}


class RecurrentPhoneClassifier(PhoneModel):
    """Bidirectional LSTM or GRU layers, then a linear layer to the phone logits, per frame.

    Args:
        input_dim: features per frame (linked from the data: ``context * 39``; with
            ``data.context: 1`` each step sees its centre frame only).
        num_classes: phone classes (linked from the data).
        cell: ``lstm`` or ``gru``.
        hidden_size: units per direction in each layer.
        num_layers: stacked bidirectional layers.
        dropout: dropout between layers and before the output layer (0: none).
        lr: Adam learning rate.
        steps_per_call: linked from the data; must be 1 (utterance batches are not split).
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
        steps_per_call: int = 1,
    ):
        super().__init__(num_classes, lr)
        self.save_hyperparameters()
        if steps_per_call != 1:
            raise InputError("model RecurrentPhoneClassifier needs data.steps_per_call 1")
        self.rnn = CELLS[cell](input_dim, hidden_size, num_layers, batch_first=True, bidirectional=True,
                               dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * hidden_size, num_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits ``utterances x frames x classes`` for zero-padded ``x`` (``utterances x
        frames x features``) of the given real ``lengths``; padded frames' logits are 0."""
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return self.head(self.dropout(out))

    def frame_logits(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        x, targets, lengths = batch
        real = torch.arange(x.shape[1], device=x.device)[None, :] < lengths.to(x.device)[:, None]
        # Boolean indexing keeps row-major order: utterance by utterance, frames in time order.
        return self(x, lengths)[real], targets[real]

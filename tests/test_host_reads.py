"""A recurrent training step reads nothing back from the device, and computes the same loss
and accuracy as real-frame indexing did.

A host read (``aten::_local_scalar_dense``: ``.item()``, ``int(tensor)``; ``aten::nonzero``:
boolean indexing) makes the host wait for the GPU to finish all it has queued, so a step
that has one cannot run ahead of the device. On the CPU the same ops show up in the
profiler, so the count is checked here without a GPU.
"""

import pytorch_lightning as pl
import torch
from torch.nn import functional as F
from torchmetrics.classification import MulticlassAccuracy

from timit_lit.callbacks.monitoring import EpochThroughput
from timit_lit.models.base import IGNORED
from timit_lit.models.recurrent import RecurrentPhoneClassifier

from helpers.host_reads import HOST_READS, OPTIMIZER_CODE, ProfileOneStep, caller, small_recurrent_recipe


def test_a_recurrent_training_step_reads_nothing_back_beyond_the_optimizer(tiny_data, tmp_path):
    """recurrent.yaml's way of training, clipping included, one process, on generated data."""
    data, model = small_recurrent_recipe(tiny_data)
    probe = ProfileOneStep(batch_idx=1)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=2, gradient_clip_val=5.0,
                         callbacks=[probe, EpochThroughput(), probe.closer], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(model, data)
    assert probe.events is not None
    names = [e.name for e in probe.events]
    assert any(name.startswith("aten::lstm") for name in names) and "Optimizer.step#AdamW.step" in names
    callers = [caller(e) for e in probe.events if e.name in HOST_READS]
    optimizer = [c for c in callers if OPTIMIZER_CODE in c]
    assert len(optimizer) == len(list(model.parameters()))  # one step count read per parameter
    assert [c for c in callers if OPTIMIZER_CODE not in c] == []


def test_ignored_padding_gives_the_numbers_of_real_frame_indexing():
    """Loss (with and without label smoothing) and accuracy over a padded batch: ignore_index
    and device-side counts give what boolean indexing of the real frames and torchmetrics'
    accuracy gave, for each batch and for their epoch average."""
    torch.manual_seed(0)
    model = RecurrentPhoneClassifier(input_dim=39, num_classes=39, hidden_size=8, num_layers=1, label_smoothing=0.1)
    model.log = lambda *args, **kwargs: None  # no trainer here
    model.eval()
    batches = []
    for lengths in ([7, 3, 5], [2, 9]):
        lengths = torch.tensor(lengths)
        x, y = torch.randn(len(lengths), int(lengths.max()), 39), torch.randint(0, 39, (len(lengths), int(lengths.max())))
        y[torch.arange(y.shape[1])[None] >= lengths[:, None]] = IGNORED
        batches.append((x, y, lengths))
    old_acc = MulticlassAccuracy(39, average="micro")
    old_loss_sum, old_frames = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            x, y, lengths = batch
            real = torch.arange(x.shape[1])[None] < lengths[:, None]
            logits_real, y_real = model(x, lengths)[real], y[real]  # the old computation
            train_loss = model.training_step(batch, 0)
            val_logits = model.validation_step(batch, 0)  # the real frames' logits; loss and accuracy into the metrics
            torch.testing.assert_close(train_loss, F.cross_entropy(logits_real, y_real, label_smoothing=0.1), rtol=1e-6, atol=0)
            torch.testing.assert_close(val_logits, logits_real, rtol=1e-6, atol=0)
            old_acc.update(logits_real, y_real)
            old_loss_sum += F.cross_entropy(logits_real, y_real) * len(y_real)
            old_frames += len(y_real)
    assert float(model.val_acc.compute()) == float(old_acc.compute())  # both batches, exactly
    assert int(model.val_acc.frames) == old_frames == 26
    torch.testing.assert_close(model.val_loss.compute(), old_loss_sum / old_frames, rtol=1e-6, atol=0)

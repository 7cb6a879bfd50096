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
from torch.profiler import ProfilerActivity, profile
from torchmetrics.classification import MulticlassAccuracy

from timit_lit.data import TimitDataModule
from timit_lit.models.base import IGNORED
from timit_lit.callbacks.monitoring import EpochThroughput
from timit_lit.models.recurrent import RecurrentPhoneClassifier

HOST_READS = ("aten::_local_scalar_dense", "aten::nonzero")
# torch.optim's Adam and AdamW (neither capturable nor fused) keep each parameter's step count
# in a CPU tensor and read it with .item() (torch/optim/optimizer.py's _get_value) for the
# bias correction: a read of host memory, no wait for a GPU, but the same profiler op.
OPTIMIZER_CODE = "torch/optim/"


class ProfileOneStep(pl.Callback):
    """Profiles training batch ``batch_idx`` from the first callback's ``on_train_batch_start``
    to the last one's ``on_train_batch_end`` (put ``closer`` last): hooks, forward, loss,
    backward, clipping, AdamW, one-cycle. Python frames are recorded as events (``with_stack``)."""

    def __init__(self, batch_idx: int):
        self.batch_idx, self.events, self._profile = batch_idx, None, None
        self.closer = _Closer(self)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.batch_idx:
            self._profile = profile(activities=[ProfilerActivity.CPU], with_stack=True)
            self._profile.__enter__()


class _Closer(pl.Callback):
    def __init__(self, probe: ProfileOneStep):
        self.probe = probe

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == self.probe.batch_idx:
            self.probe._profile.__exit__(None, None, None)
            self.probe.events = self.probe._profile.events()


def _caller(event) -> str:
    """The innermost Python frame an op was called from (``path.py(line): function``)."""
    while event is not None and ".py(" not in event.name:
        event = event.cpu_parent
    return event.name if event is not None else "?"


def small_recurrent_recipe(data_dir) -> tuple[TimitDataModule, RecurrentPhoneClassifier]:
    """recurrent.yaml's way of training (dropout, input masks, label smoothing, AdamW,
    one-cycle, length buckets) at a test's size; the trainer adds clipping."""
    pl.seed_everything(0)
    data = TimitDataModule(data_dir=str(data_dir), batch_by="utterances", batch_size=4, bucket_by_length=True,
                           val_ratio=0.0, context=1)
    model = RecurrentPhoneClassifier(input_dim=39, hidden_size=16, num_layers=2, frames_per_step=2, dropout=0.3,
                                     label_smoothing=0.1, weight_decay=0.01, schedule="one_cycle", time_masks=2,
                                     feature_masks=2, feature_mask_dims=6)
    return data, model


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
    callers = [_caller(e) for e in probe.events if e.name in HOST_READS]
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

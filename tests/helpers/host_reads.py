"""Profiling one training step for reads back from the device (tests/test_host_reads.py, tests/test_gpu.py)."""

from __future__ import annotations

import pytorch_lightning as pl
from torch.profiler import ProfilerActivity, profile

from timit_lit.data import TimitDataModule
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


def caller(event) -> str:
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

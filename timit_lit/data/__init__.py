"""The HW2-1 ``timit_11`` files: reading and checking them (files), their utterances and
context windows (utterances), the datasets and sampler that serve them (datasets,
samplers), and the LightningDataModule that puts them together (datamodule)."""

from timit_lit.data.datamodule import TimitDataModule
from timit_lit.data.datasets import FrameDataset, UtteranceDataset
from timit_lit.data.files import TEST_FEATURES, TEST_LABELS, TRAIN_FEATURES, TRAIN_LABELS
from timit_lit.data.samplers import LengthBucketedOrder
from timit_lit.data.utterances import ContextWindows

__all__ = ["TimitDataModule", "FrameDataset", "UtteranceDataset", "LengthBucketedOrder", "ContextWindows",
           "TRAIN_FEATURES", "TRAIN_LABELS", "TEST_FEATURES", "TEST_LABELS"]

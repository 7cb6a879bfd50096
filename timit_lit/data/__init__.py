"""The HW2-1 ``timit_11`` files: reading and checking them (files, folder), their utterances
and context windows (utterances, row_links), what a split's row ids are (row_space), the
datasets and sampler that serve them (datasets, samplers), and the LightningDataModule that
puts them together (datamodule). The names below are imported on first use, so that reading a
file (``timit_lit.data.files``) loads neither Lightning nor matplotlib."""

from importlib import import_module

# Public name: the module that defines it.
_EXPORTS = {
    "TimitDataModule": "timit_lit.data.datamodule",
    "FrameDataset": "timit_lit.data.datasets",
    "UtteranceDataset": "timit_lit.data.datasets",
    "LengthBucketedOrder": "timit_lit.data.samplers",
    "ContextWindows": "timit_lit.data.utterances",
    "RowSpace": "timit_lit.data.row_space",
    "TRAIN_FEATURES": "timit_lit.data.files",
    "TRAIN_LABELS": "timit_lit.data.files",
    "TEST_FEATURES": "timit_lit.data.files",
    "TEST_LABELS": "timit_lit.data.files",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value  # imported once
        return value
    raise AttributeError(f"module 'timit_lit.data' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)

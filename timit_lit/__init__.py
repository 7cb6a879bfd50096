"""timit_lit: framewise phone classification on TIMIT (NTU ML2021 HW2-1) with PyTorch Lightning.

From Python (docs/api.md): ``timit_lit.run("fit", config="configs/demo.yaml")`` runs what
``python -m timit_lit fit --config configs/demo.yaml`` runs and returns what it made. The
names below are imported on first use, so that ``import timit_lit`` stays light.

The data module and the networks stay in ``timit_lit.data`` and ``timit_lit.models``, not
here: jsonargparse writes a class into configs and checkpoints (``model.class_path``) under
its shortest import path, so an alias here would turn ``timit_lit.models.PhoneClassifier``
into ``timit_lit.PhoneClassifier`` in every run's config.yaml and checkpoint.
"""

from importlib import import_module

__version__ = "1.0.0"

# Public name: the module that defines it.
_EXPORTS = {
    "run": "timit_lit.api",
    "RunResult": "timit_lit.api",
    "main": "timit_lit.cli",
    "write_synthetic_timit": "timit_lit.data.synthetic",
    "InputError": "timit_lit.errors",
    "PHONES": "timit_lit.phones",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value  # imported once
        return value
    raise AttributeError(f"module 'timit_lit' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)

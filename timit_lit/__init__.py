"""timit_lit: framewise phone classification on TIMIT (NTU ML2021 HW2-1) with PyTorch Lightning.

From Python (docs/api.md): ``timit_lit.run("fit", config="configs/demo.yaml")`` runs what
``python -m timit_lit fit --config configs/demo.yaml`` runs and returns what it made; the
data module, the networks and the generator are here too. They are imported on first use,
so that ``import timit_lit`` stays light.
"""

from importlib import import_module

__version__ = "1.0.0"

# Public name: the module that defines it.
_EXPORTS = {
    "run": "timit_lit.api",
    "RunResult": "timit_lit.api",
    "main": "timit_lit.cli",
    "TimitDataModule": "timit_lit.data",
    "PhoneModel": "timit_lit.models",
    "PhoneClassifier": "timit_lit.models",
    "RecurrentPhoneClassifier": "timit_lit.models",
    "CheckpointEnsemble": "timit_lit.models",
    "write_synthetic_timit": "timit_lit.synthetic",
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

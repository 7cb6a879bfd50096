"""Checkpoints saved by an older timit_lit, brought up to date as they are read.

A checkpoint names its network's class path in ``hyper_parameters._class_path``, and
carries the network's hyperparameters; both change as the code does. Each entry below
says what a past layout saved and what it means now.
"""

from __future__ import annotations

# Networks' class paths before the networks moved into timit_lit/models/, as checkpoints saved
# then name them in hyper_parameters._class_path, and where those classes are now.
MOVED_CLASS_PATHS = {
    "timit_lit.model.PhoneModel": "timit_lit.models.PhoneModel",
    "timit_lit.model.PhoneClassifier": "timit_lit.models.PhoneClassifier",
    "timit_lit.recurrent.RecurrentPhoneClassifier": "timit_lit.models.RecurrentPhoneClassifier",
    "timit_lit.ensemble.CheckpointEnsemble": "timit_lit.models.CheckpointEnsemble",
}
# Hyperparameters that networks no longer take, as checkpoints saved before then carry them:
# steps_per_call was a data option linked into every network before it became the MLP's own.
RETIRED_HYPERPARAMETERS = {
    "timit_lit.models.RecurrentPhoneClassifier": ("steps_per_call",),
    "timit_lit.models.CheckpointEnsemble": ("steps_per_call",),
}


def update_old_hyperparameters(hparams) -> None:
    """A checkpoint's ``hyper_parameters``, in place: its network's class path as it is now
    (:data:`MOVED_CLASS_PATHS`), without the hyperparameters it no longer takes
    (:data:`RETIRED_HYPERPARAMETERS`). Anything else is left for the trust check to judge."""
    if not isinstance(hparams, dict) or not isinstance(hparams.get("_class_path"), str):
        return
    hparams["_class_path"] = MOVED_CLASS_PATHS.get(hparams["_class_path"], hparams["_class_path"])
    for key in RETIRED_HYPERPARAMETERS.get(hparams["_class_path"], ()):
        hparams.pop(key, None)

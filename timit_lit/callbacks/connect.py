"""How the forced callbacks that evaluate and write are connected: given their parts here, none looks another up."""

from __future__ import annotations

from collections.abc import Mapping

import pytorch_lightning as pl

from timit_lit.callbacks.outputs import EvaluationOutputs
from timit_lit.errors import InputError

# The CLI groups of the forced callbacks that decode, and of all that score an evaluation epoch's predictions.
DECODERS = ("decoding", "phone_decoding")
EVALUATIONS = (*DECODERS, "phone_errors")


def connect_evaluations(forced: Mapping[str, pl.Callback], trainer: pl.Trainer, predicting: bool) -> None:
    """Give the evaluations of ``forced`` (the CLI's callbacks by group, ``prediction`` among
    them) one collector of each epoch's predictions, added to ``trainer``'s callbacks, and the
    CSV writer the enabled decoder, if any."""
    if any(forced[key].enabled for key in EVALUATIONS):
        outputs = EvaluationOutputs()
        for key in EVALUATIONS:
            forced[key].outputs = outputs
        trainer.callbacks.append(outputs)
    decoders = [forced[key] for key in DECODERS if forced[key].enabled]
    if len(decoders) > 1 and predicting:
        raise InputError("decoding.enabled and phone_decoding.enabled are both true: predict writes one decoding "
                         "of the classes, so enable one of them")
    forced["prediction"].decoder = decoders[0] if decoders else None

"""The networks: the common LightningModule (base), the notebook's MLP (mlp), the recurrent
network (recurrent), the Conformer (conformer), checkpoint ensembles (ensemble), and the
MLP's fast training steps (train_steps)."""

from timit_lit.models.base import PhoneModel
from timit_lit.models.conformer import ConformerPhoneClassifier
from timit_lit.models.ensemble import CheckpointEnsemble
from timit_lit.models.mlp import PhoneClassifier
from timit_lit.models.recurrent import RecurrentPhoneClassifier

__all__ = ["PhoneModel", "PhoneClassifier", "RecurrentPhoneClassifier", "ConformerPhoneClassifier", "CheckpointEnsemble"]

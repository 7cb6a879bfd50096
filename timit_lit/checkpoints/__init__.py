"""Checkpoints, taken as data, never as code: found (finding: ``--ckpt_path last`` / ``best``
/ ``hpc``), read without unpickling and checked whole (reading), brought up to date from
older layouts (migration), trusted to name no code but a known network (trust), a resumed
fit's training state checked (training_state), and saved values that do not parse said in
one line (parse_errors).

These modules import no network, callback or CLI: the networks (an ensemble reading its
members) and the callbacks (resuming) build on them.
"""

from timit_lit.checkpoints.finding import ckpt_path_best, ckpt_path_hpc, ckpt_path_last, find_hpc_checkpoint, find_last_checkpoint, logger_version
from timit_lit.checkpoints.migration import MOVED_CLASS_PATHS, RETIRED_HYPERPARAMETERS
from timit_lit.checkpoints.parse_errors import one_line_parse_errors, parse_error_reason
from timit_lit.checkpoints.reading import read_checkpoint
from timit_lit.checkpoints.training_state import CHECKPOINT_KEY, check_training_state
from timit_lit.checkpoints.trust import checkpoint_network, imported_object

__all__ = ["ckpt_path_best", "ckpt_path_hpc", "ckpt_path_last", "find_hpc_checkpoint", "find_last_checkpoint",
           "logger_version", "MOVED_CLASS_PATHS", "RETIRED_HYPERPARAMETERS", "one_line_parse_errors",
           "parse_error_reason", "read_checkpoint", "CHECKPOINT_KEY", "check_training_state", "checkpoint_network",
           "imported_object"]

"""Process-wide settings of a timit_lit run: warnings that are noise here, glibc's malloc for
`predict`, and the process group left before the interpreter exits."""

from __future__ import annotations

import ctypes
import logging
import warnings
from contextlib import contextmanager
from typing import Iterator

import torch.distributed as dist


def quiet_known_warnings() -> None:
    """Silence warnings that are noise for this project, each for a stated reason."""
    # jsonargparse >= 4.49 deprecations of calls in Lightning's own CLI code, not ours.
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"pytorch_lightning\.cli")
    # Batches are slices of a memory map read in the main process: workers do not help.
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    # Metrics are logged per epoch only, so Lightning's per-step logging interval does not apply.
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
    # --optimizer / --lr_scheduler replace PhoneModel.configure_optimizers (Adam at model.lr): that
    # is what they are for, and docs/configs.md says so (model.lr is then unused).
    warnings.filterwarnings("ignore", message=r".*configure_optimizers` will be overridden by .*")
    # Lightning 2.6 calls a torch pytree API that torch >= 2.10 deprecates.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # Evaluating or branching from a checkpoint: its ModelCheckpoint states (best-k scores) belong
    # to the run that wrote it, and are not wanted in another folder; nothing to do about it.
    warnings.filterwarnings("ignore", message=r".*The dirpath has changed from .* won't be reloaded.*")
    # Lightning's advertisement for its cloud logger, printed by every run.
    for name in ("pytorch_lightning", "lightning_fabric"):
        for logger in (logging.getLogger(f"{name}.utilities.rank_zero"), logging.getLogger(name)):
            if _NoAdvert not in map(type, logger.filters):
                logger.addFilter(_NoAdvert())


class _NoAdvert(logging.Filter):
    """Drops Lightning's litlogger tip."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in str(record.msg)


def return_large_buffers_to_the_os() -> None:
    """Keep glibc from holding on to freed batch buffers during `predict`.

    glibc raises its mmap threshold each time a large buffer is freed, and then serves the
    next multi-MB buffers (a 4096-row batch, its activations) from the heap, where the
    outputs `predict` keeps between them stop it from shrinking. A fixed 1 MB threshold keeps
    large buffers in their own mappings, returned to the OS when freed (the peaks before and
    after: docs/speed.md#memory). Not for `fit`: mapping every weight gradient afresh made
    batch-64 steps slower.
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD, glibc only
    except (OSError, AttributeError):
        pass


@contextmanager
def process_group_left_on_exit() -> Iterator[None]:
    """Destroy the process group a run joined (DDP), once the run is over, error or not.

    Lightning destroys it at exit for NCCL only. A gloo group (DDP on CPU) left to the
    interpreter's shutdown can abort a process whose work is done, with "terminate called
    without an active exception" and status -6 (pytorch/pytorch#190489). A group that was
    there before the run belongs to the caller and stays.
    """
    joined_here = not (dist.is_available() and dist.is_initialized())
    try:
        yield
    finally:
        if joined_here and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()

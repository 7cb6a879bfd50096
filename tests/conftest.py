"""Shared fixtures: tiny generated TIMIT-shaped data and a trained run (helpers: tests/helpers/)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from timit_lit.synthetic import write_synthetic_timit

from helpers import BASELINE, FAST, FIGURES, run_in


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """~2,300 training rows and an odd number (~950) of test rows, with test labels."""
    out = tmp_path_factory.mktemp("tiny_timit_11")
    lengths = write_synthetic_timit(out, train_utterances=12, test_utterances=5, seed=1)
    assert sum(lengths["test"]) % 2 == 1, "DDP predict tests need an odd number of test rows"
    return out


@pytest.fixture(scope="session")
def trained_run(tiny_data, tmp_path_factory) -> Path:
    """The run folder of a baseline-network fit of 2 epochs on ``tiny_data``."""
    workdir = tmp_path_factory.mktemp("trained")
    run_in(workdir, "fit", "--config", BASELINE, "--data.data_dir", str(tiny_data), *FAST, "--trainer.max_epochs", "2", *FIGURES)
    return workdir / "lightning_logs" / "version_0"


@pytest.fixture(scope="session")
def best_checkpoint(trained_run, tmp_path_factory) -> Path:
    """A copy of the trained run's best checkpoint, outside the run: evaluating a checkpoint in
    its run folder logs into that run, and ``trained_run``'s curves must stay those of its fit."""
    (best,) = (trained_run / "checkpoints").glob("epoch=*.ckpt")
    copy = tmp_path_factory.mktemp("best") / best.name
    shutil.copy2(best, copy)
    return copy


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.gpu`` tests need a CUDA device: skipped, saying so, where there is none."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

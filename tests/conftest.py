"""Shared fixtures: tiny generated TIMIT-shaped data and helpers that run the CLI in-process."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from timit_lit.cli import main
from timit_lit.synthetic import write_synthetic_timit

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
BASELINE = str(REPO / "configs" / "baseline.yaml")
# No progress bar or summary in test logs.
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
# The baseline network, trained faster: bigger batches and a bigger step.
FAST = ["--data.batch_size", "256", "--model.lr", "0.002"]


def run_in(workdir: Path, *args: str):
    """``main([...])`` with ``workdir`` as the working directory (runs write ``lightning_logs/`` there)."""
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        return main([*args, *QUIET])
    finally:
        os.chdir(cwd)


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
    run_in(workdir, "fit", "--config", BASELINE, "--data.data_dir", str(tiny_data), *FAST, "--trainer.max_epochs", "2")
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


def without_data_summary(stderr: str) -> list[str]:
    """stderr's lines without the data module's one-line summary of the utterances it found
    (``timit_lit: DIR: 2 files (...): N utterances ...``), which comes before any error."""
    return [line for line in stderr.strip().splitlines() if not re.match(r"timit_lit: .*: \d+ files \(.*\): [\d,]+ utterances", line)]

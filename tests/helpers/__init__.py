"""What the tests share: where the repository and its configs are, options that keep test logs
quiet, running the CLI in-process in a folder, and expecting its one-line errors.

One importable package (``from helpers import run_in``: pyproject puts ``tests/`` on the
path, under any ``--import-mode``) rather than test modules importing each other or
``conftest``; the fixtures stay in ``conftest.py``. Its modules: ``metrics`` (phone error
rate and boundary accuracy recomputed independently), ``host_reads`` (profiling a training
step for reads back from the device), ``shuffled_split`` (MLE-bench's split of a data
folder), and the callbacks subprocesses load by class path, ``signal_at`` and ``utterance_log``.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from timit_lit.cli import main

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
BASELINE = str(REPO / "configs" / "baseline.yaml")
# No progress bar or summary in test logs.
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
# The baseline network, trained faster: bigger batches and a bigger step.
FAST = ["--data.batch_size", "256", "--model.lr", "0.002"]
# The tests folder and the repository, for subprocesses that load these helpers by class path.
TESTS_PATH = os.pathsep.join([str(REPO), str(REPO / "tests")])


# Validation figures off in `fit` and `validate` unless a test turns them on (`--figures.enabled true`,
# as the tests of the figures and a few runs of each kind of network and data do): matplotlib's
# drawing takes longer than a tiny fit's steps, about a second per validation epoch.
NO_FIGURES = ["--figures.enabled", "false"]
FIGURES = ["--figures.enabled", "true"]


def run_in(workdir: Path, *args: str):
    """``main([...])`` with ``workdir`` as the working directory (runs write ``lightning_logs/`` there),
    without validation figures unless ``args`` ask for them (:data:`NO_FIGURES`)."""
    if args[:1] in (("fit",), ("validate",)):
        args = (args[0], *NO_FIGURES, *args[1:])
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        return main([*args, *QUIET])
    finally:
        os.chdir(cwd)


def fails_with(workdir, capsys, *args):
    """Run the CLI, expect exit 2, return the error line (asserting it is the only one)."""
    with pytest.raises(SystemExit) as exit_info:
        run_in(workdir, *args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("timit_lit: error:")]
    assert len(errors) == 1 and "Traceback" not in err
    return errors[0]


def copy_data(src, dst, **replace):
    """A copy of the tiny data set with some files replaced by the given arrays."""
    shutil.copytree(src, dst)
    for name, array in replace.items():
        np.save(dst / f"{name}.npy", array)
    return dst


def without_data_summary(stderr: str) -> list[str]:
    """stderr's lines without the data module's one-line summary of the utterances it found
    (``timit_lit: DIR: 2 files (...): N utterances ...``), which comes before any error."""
    return [line for line in stderr.strip().splitlines() if not re.match(r"timit_lit: .*: \d+ files \(.*\): [\d,]+ utterances", line)]

"""A checkpoint written by an earlier timit_lit loads, decodes and scores as it did there.

``fixtures/checkpoint_009882e/`` holds a tiny weights-only MLP checkpoint fitted at commit
009882e on the tests' generated data (``make_fixture.py``, run in a worktree of that commit),
and what ``predict`` and ``test`` with Viterbi decoding made of it there. Its phone statistics
are in the format of then: beside the weights, as plain lists.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from timit_lit.decoding import STATISTICS_KEY, PhoneStatistics
from timit_lit.models.base import STATISTICS_BUFFERS

from helpers import run_in

FIXTURE = Path(__file__).parent / "fixtures" / "checkpoint_009882e"
CHECKPOINT = FIXTURE / "mlp_009882e.ckpt"
DECODING = ["--decoding.enabled", "true", "--decoding.transition_weight", "1", "--decoding.prior_weight", "0.5"]


def test_the_fixture_is_of_the_old_format():
    saved = torch.load(CHECKPOINT, weights_only=True)
    assert STATISTICS_KEY in saved and not set(STATISTICS_BUFFERS) & set(saved["state_dict"])


def test_a_009882e_checkpoint_predicts_the_same_bytes_and_keeps_its_statistics(tiny_data, tmp_path):
    out = tmp_path / "decoded.csv"
    cli = run_in(tmp_path, "predict", "--ckpt_path", str(CHECKPOINT), "--data.data_dir", str(tiny_data), *DECODING,
                 "--prediction.output_path", str(out))
    assert out.read_bytes() == (FIXTURE / "predict_viterbi.csv").read_bytes()
    saved = PhoneStatistics.from_state_dict(torch.load(CHECKPOINT, weights_only=True)[STATISTICS_KEY])
    loaded = cli.model.phone_statistics  # now buffers of the model's state_dict
    for name in ("frames", "initial", "transitions"):
        assert np.array_equal(getattr(loaded, name), getattr(saved, name)), name
    assert loaded.smoothing == saved.smoothing
    assert set(STATISTICS_BUFFERS) <= set(cli.model.state_dict())


def test_a_009882e_checkpoint_tests_the_same_metrics(tiny_data, tmp_path):
    cli = run_in(tmp_path, "test", "--ckpt_path", str(CHECKPOINT), "--data.data_dir", str(tiny_data), *DECODING,
                 "--trainer.logger", "false")
    metrics = {name: float(value) for name, value in sorted(cli.trainer.callback_metrics.items())}
    assert metrics == json.loads((FIXTURE / "test_metrics.json").read_text())

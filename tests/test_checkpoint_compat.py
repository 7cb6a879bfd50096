"""A checkpoint in the format from before the phone statistics became buffers loads, decodes and
scores as the same checkpoint in today's format.

Until the row-space redesign a checkpoint kept its phone statistics beside the weights, as
plain lists under :data:`~timit_lit.decoding.STATISTICS_KEY`; now they are buffers of the
model's ``state_dict``. The old format is made here from a checkpoint of today's, by moving the
buffers back beside the weights, rather than kept as a binary file in the repository.
"""

from __future__ import annotations

import numpy as np
import torch

from timit_lit.decoding import STATISTICS_KEY
from timit_lit.models.base import STATISTICS_BUFFERS

from helpers import run_in

DECODING = ["--decoding.enabled", "true", "--decoding.transition_weight", "1", "--decoding.prior_weight", "0.5"]


def old_format(checkpoint, path):
    """``checkpoint`` written as before: statistics out of the ``state_dict``, as lists beside it."""
    saved = torch.load(checkpoint, weights_only=True)
    buffers = {name: saved["state_dict"].pop(name) for name in STATISTICS_BUFFERS}
    saved[STATISTICS_KEY] = {"frames": buffers["phone_frames"].long().tolist(),
                             "initial": buffers["phone_initial"].long().tolist(),
                             "transitions": buffers["phone_transitions"].long().tolist(),
                             "smoothing": float(buffers["phone_smoothing"])}
    torch.save(saved, path)
    return path


def test_an_old_format_checkpoint_predicts_the_same_bytes_and_keeps_its_statistics(tiny_data, best_checkpoint, tmp_path):
    old = old_format(best_checkpoint, tmp_path / "old.ckpt")
    assert not set(STATISTICS_BUFFERS) & set(torch.load(old, weights_only=True)["state_dict"])
    clis = {}
    for name, checkpoint in (("new", best_checkpoint), ("old", old)):
        clis[name] = run_in(tmp_path, "predict", "--ckpt_path", str(checkpoint), "--data.data_dir", str(tiny_data),
                            *DECODING, "--prediction.output_path", str(tmp_path / f"{name}.csv"))
    assert (tmp_path / "old.csv").read_bytes() == (tmp_path / "new.csv").read_bytes()
    loaded, kept = clis["old"].model.phone_statistics, clis["new"].model.phone_statistics
    assert loaded.frames.sum() > 0  # counted at the fit, not zeros
    for name in ("frames", "initial", "transitions"):
        assert np.array_equal(getattr(loaded, name), getattr(kept, name)), name
    assert loaded.smoothing == kept.smoothing
    assert set(STATISTICS_BUFFERS) <= set(clis["old"].model.state_dict())


def test_an_old_format_checkpoint_tests_the_same_metrics(tiny_data, best_checkpoint, tmp_path):
    old = old_format(best_checkpoint, tmp_path / "old.ckpt")
    metrics = {}
    for name, checkpoint in (("new", best_checkpoint), ("old", old)):
        cli = run_in(tmp_path, "test", "--ckpt_path", str(checkpoint), "--data.data_dir", str(tiny_data), *DECODING,
                     "--trainer.logger", "false")
        metrics[name] = {key: float(value) for key, value in sorted(cli.trainer.callback_metrics.items())}
    assert metrics["old"] == metrics["new"] and "test/acc_viterbi" in metrics["new"]

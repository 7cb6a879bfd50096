"""benchmarks/average_checkpoints.py: one run's epoch checkpoints averaged, loaded like any checkpoint."""

import subprocess
import sys

import pytest
import torch

from helpers import BASELINE, FAST, REPO, run_in

# A measuring tool's tests (benchmarks/, not the package): four fits and three processes, about
# 30 s of the default suite's time; run with -m slow.
pytestmark = pytest.mark.slow

TOOL = [sys.executable, str(REPO / "benchmarks" / "average_checkpoints.py")]


def test_the_average_of_a_runs_epochs_is_what_test_evaluates(tiny_data, tmp_path):
    run_in(tmp_path, "fit", "--config", BASELINE, "--data.data_dir", str(tiny_data), *FAST,
           "--trainer.max_epochs", "3", "--checkpoint.save_top_k", "-1")
    epochs = sorted((tmp_path / "lightning_logs/version_0/checkpoints").glob("epoch=*.ckpt"))
    assert len(epochs) == 3
    out = tmp_path / "average.ckpt"
    done = subprocess.run([*TOOL, *map(str, epochs[1:]), "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    weights = [torch.load(path, weights_only=True)["state_dict"] for path in epochs[1:]]
    assert any(not torch.equal(weights[0][name], weights[1][name]) for name in weights[0])

    cli = run_in(tmp_path, "test", "--config", BASELINE, "--data.data_dir", str(tiny_data), "--ckpt_path", str(out))
    tested = cli.model.state_dict()
    for name, weight in weights[1].items():
        expected = (weights[0][name] + weight) / 2 if weight.is_floating_point() else weight
        torch.testing.assert_close(tested[name], expected)
    assert 0 < float(cli.trainer.callback_metrics["test/acc"]) <= 1

    again = subprocess.run([*TOOL, str(epochs[0]), "--out", str(out)], capture_output=True, text=True)
    assert again.returncode == 2 and again.stderr.strip() == f"error: {out}: already exists (not overwritten)"


def test_checkpoints_of_different_networks_are_refused_in_one_line(tiny_data, tmp_path):
    for width in ("32", "16"):
        run_in(tmp_path, "fit", "--config", BASELINE, "--data.data_dir", str(tiny_data), *FAST,
               "--trainer.max_epochs", "1", "--model.hidden_sizes", f"[{width}]")
    wide, narrow = (next((tmp_path / f"lightning_logs/version_{v}/checkpoints").glob("epoch=*.ckpt")) for v in (0, 1))
    out = tmp_path / "average.ckpt"
    refused = subprocess.run([*TOOL, str(wide), str(narrow), "--out", str(out)], capture_output=True, text=True)
    assert refused.returncode == 2 and not out.exists()
    assert refused.stderr.strip() == f"error: {wide}: its weights differ from {narrow}'s in name or shape (not one network)"

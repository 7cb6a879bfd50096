"""Speed options change how fast `fit` runs, never what it computes; and no step waits on the host."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from conftest import BASELINE, run_in
from timit_lit.model import mlp


def fit(workdir, data, *options: str):
    """The baseline config at its batch size 64 for 2 epochs; returns (weights, final metrics)."""
    workdir.mkdir()
    cli = run_in(workdir, "fit", "--config", BASELINE, "--data.data_dir", str(data), "--trainer.max_epochs", "2", *options)
    # All logged metrics but the frames per second, which speed options are there to change.
    metrics = {k: v.item() for k, v in cli.trainer.logged_metrics.items() if k != "train/frames_per_s"}
    return cli.model.state_dict(), metrics


@pytest.mark.parametrize(
    "options",
    [
        ["--data.steps_per_call", "5"],  # ~29 batches per epoch: the last call is short and ends ragged
        ["--data.features_on_device", "true"],
        ["--data.steps_per_call", "8", "--data.features_on_device", "true"],
    ],
    ids=["steps_per_call", "features_on_device", "both"],
)
def test_speed_options_train_the_same_weights(tiny_data, tmp_path, options):
    plain_weights, plain_metrics = fit(tmp_path / "plain", tiny_data)
    weights, metrics = fit(tmp_path / "fast", tiny_data, *options)
    assert weights.keys() == plain_weights.keys()
    for name, tensor in weights.items():
        assert torch.equal(tensor, plain_weights[name]), name  # bit for bit: the same Adam updates in the same order
    assert metrics.keys() == plain_metrics.keys()
    for name, value in metrics.items():  # epoch means: summed in another order, so to rounding
        assert value == pytest.approx(plain_metrics[name], rel=1e-6, abs=1e-7), name


def _host_syncs(run) -> int:
    """How many times ``run`` read a tensor's value into Python (``.item()``, ``bool(t)``, ...):
    each of those waits for the device to finish everything queued."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    return sum(e.count for e in prof.key_averages() if e.key == "aten::_local_scalar_dense")


def _plain_adam_steps(steps: int) -> None:
    model = mlp(429, (1024, 512, 128), 39, "sigmoid")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(torch.randn(64, 429)), torch.randint(39, (64,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("steps_per_call", [1, 4])
def test_no_host_sync_per_training_step(tiny_data, tmp_path, steps_per_call):
    """Syncs that grow with the number of steps are counted, beyond those of a bare Adam step.

    On a CPU, Adam reads its own step counters with ``.item()`` (host tensors: no device
    wait); everything Lightning, the model and the metrics add per step must be zero.
    """
    def timit_lit_fit(batches: int):
        def run():
            workdir = tmp_path / f"k{steps_per_call}-{batches}"
            workdir.mkdir()
            run_in(workdir, "fit", "--config", BASELINE, "--data.data_dir", str(tiny_data),
                   "--data.steps_per_call", str(steps_per_call), "--trainer.max_epochs", "1",
                   "--trainer.limit_train_batches", str(batches), "--trainer.limit_val_batches", "0",
                   "--trainer.logger", "false")
        return run

    adam_per_step = (_host_syncs(lambda: _plain_adam_steps(8)) - _host_syncs(lambda: _plain_adam_steps(4))) / 4
    extra_steps = 2 * steps_per_call  # the tiny set has ~29 batches of 64 per epoch: keep inside one
    per_step = (_host_syncs(timit_lit_fit(4)) - _host_syncs(timit_lit_fit(2))) / extra_steps
    assert per_step == adam_per_step

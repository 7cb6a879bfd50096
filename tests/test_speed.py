"""Speed options change how fast `fit` runs, never what it computes; and no step waits on the host."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from pytorch_lightning import Callback
from torch.profiler import ProfilerActivity, profile

import timit_lit.models.mlp as model
from timit_lit.models.mlp import mlp

from helpers import BASELINE, QUIET, REPO, run_in


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
        ["--model.steps_per_call", "5"],  # ~29 batches per epoch: the last call is short and ends ragged
        ["--data.features_on_device", "true"],
        pytest.param(["--model.steps_per_call", "8", "--data.features_on_device", "true"], marks=pytest.mark.slow),
    ],
    ids=["steps_per_call", "features_on_device", "both"],
)
def test_speed_options_train_the_same_weights(tiny_data, tmp_path, options):
    plain_weights, plain_metrics = fit(tmp_path / "plain", tiny_data, "--model.steps_per_call", "1")  # Lightning's steps
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
                   "--model.steps_per_call", str(steps_per_call), "--trainer.max_epochs", "1",
                   "--trainer.limit_train_batches", str(batches), "--trainer.limit_val_batches", "0",
                   "--trainer.logger", "false")
        return run

    adam_per_step = (_host_syncs(lambda: _plain_adam_steps(8)) - _host_syncs(lambda: _plain_adam_steps(4))) / 4
    extra_steps = 2 * steps_per_call  # the tiny set has ~29 batches of 64 per epoch: keep inside one
    per_step = (_host_syncs(timit_lit_fit(4)) - _host_syncs(timit_lit_fit(2))) / extra_steps
    assert per_step == adam_per_step


def test_cuda_graph_needs_a_cuda_device(tiny_data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_in(tmp_path, "fit", "--config", BASELINE, "--data.data_dir", str(tiny_data), "--model.cuda_graph", "true",
               "--trainer.accelerator", "cpu")
    assert exit_info.value.code == 2
    assert "model.cuda_graph needs one process, on a CUDA device," in capsys.readouterr().err


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
ON_GPU = ["--trainer.accelerator", "gpu", "--trainer.devices", "1", "--data.features_on_device", "true"]


@needs_cuda
def test_cuda_graph_trains_like_eager_steps(tiny_data, tmp_path):
    eager_weights, eager_metrics = fit(tmp_path / "eager", tiny_data, *ON_GPU, "--model.steps_per_call", "8")
    graph_weights, graph_metrics = fit(tmp_path / "graph", tiny_data, *ON_GPU, "--model.steps_per_call", "8",
                                       "--model.cuda_graph", "true")
    for name, tensor in graph_weights.items():  # fused, capturable Adam rounds differently in the last bits
        torch.testing.assert_close(tensor, eager_weights[name], rtol=1e-4, atol=1e-5)
    for name, value in graph_metrics.items():
        assert value == pytest.approx(eager_metrics[name], rel=1e-3), name


@needs_cuda
# steps_per_call 1 (Lightning's automatic optimization) is left out: on an H200 this count grew
# with the steps although a trace of a steady-state step in sync-error mode raised nothing;
# unexplained, so not claimed.
@pytest.mark.parametrize("options", [["--model.steps_per_call", "4"], ["--model.steps_per_call", "4", "--model.cuda_graph", "true"]])
def test_no_device_sync_per_training_step_on_gpu(tiny_data, tmp_path, options):
    import warnings

    def syncs(batches: int) -> int:
        workdir = tmp_path / f"{batches}"
        workdir.mkdir()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                run_in(workdir, "fit", "--config", BASELINE, "--data.data_dir", str(tiny_data), *ON_GPU, *options,
                       "--trainer.max_epochs", "1", "--trainer.limit_train_batches", str(batches),
                       "--trainer.limit_val_batches", "0", "--trainer.logger", "false")
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchronizing" in str(w.message) for w in caught)

    assert syncs(6) == syncs(3)


def test_steps_per_call_refuses_a_scheduler_it_would_not_step(tiny_data, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_in(tmp_path, "fit", "--config", BASELINE, "--data.data_dir", str(tiny_data), "--model.steps_per_call", "4",
               "--optimizer", "Adam", "--lr_scheduler", "StepLR", "--lr_scheduler.step_size", "1")
    assert "steps no learning-rate scheduler" in capsys.readouterr().err


def test_features_on_device_with_wider_context_trains_the_same_weights(tiny_data, tmp_path):
    wide = ["--data.context", "21", "--data.split", "utterance", "--trainer.max_epochs", "1"]
    host_weights, _ = fit(tmp_path / "host", tiny_data, *wide)
    device_weights, _ = fit(tmp_path / "device", tiny_data, *wide, "--data.features_on_device", "true",
                            "--model.steps_per_call", "4")
    for name, tensor in device_weights.items():
        assert torch.equal(tensor, host_weights[name]), name


def test_label_smoothing_is_the_same_on_lightnings_steps_and_the_models_own(tiny_data, tmp_path):
    """Both kinds of step minimise the model's training loss (PhoneModel.training_loss)."""
    smoothed = ["--model.label_smoothing", "0.2"]
    lightning_weights, lightning_metrics = fit(tmp_path / "lightning", tiny_data, "--model.steps_per_call", "1", *smoothed)
    own_weights, own_metrics = fit(tmp_path / "own", tiny_data, "--model.steps_per_call", "4", *smoothed)
    plain_weights, _ = fit(tmp_path / "plain", tiny_data, "--model.steps_per_call", "4")
    for name, tensor in own_weights.items():
        assert torch.equal(tensor, lightning_weights[name]), name
    assert own_metrics == pytest.approx(lightning_metrics, rel=1e-6, abs=1e-7)
    assert not all(torch.equal(tensor, plain_weights[name]) for name, tensor in own_weights.items())


class EveryStep(Callback):
    """A callback that must see every optimizer step."""

    def on_after_backward(self, trainer, pl_module):
        pass


def test_steps_per_call_auto_takes_its_own_steps_with_the_same_weights(tiny_data, tmp_path):
    """The default, ``steps_per_call: auto``, at baseline.yaml's batch of 64: 32 steps per call."""
    plain_weights, plain_metrics = fit(tmp_path / "plain", tiny_data, "--model.steps_per_call", "1")
    workdir = tmp_path / "auto"
    workdir.mkdir()
    cli = run_in(workdir, "fit", "--config", BASELINE, "--data.data_dir", str(tiny_data), "--trainer.max_epochs", "2")
    assert cli.model.steps_per_call == 32 and not cli.model.automatic_optimization
    for name, tensor in cli.model.state_dict().items():
        assert torch.equal(tensor, plain_weights[name]), name
    metrics = {k: v.item() for k, v in cli.trainer.logged_metrics.items() if k != "train/frames_per_s"}
    assert metrics == pytest.approx(plain_metrics, rel=1e-6, abs=1e-7)
    # TensorBoard's steps stay optimizer steps: the curves line up with steps_per_call 1's.
    plain_steps = {tag: [e.step for e in events.Scalars(tag)] for tag, events in _scalars(tmp_path / "plain").items()}
    assert {tag: [e.step for e in events.Scalars(tag)] for tag, events in _scalars(workdir).items()} == plain_steps


def _scalars(workdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(workdir / "lightning_logs" / "version_0")).Reload()
    return {tag: events for tag in events.Tags()["scalars"] if tag != "train/frames_per_s"}


@pytest.mark.parametrize("options, reason", [
    (["--trainer.gradient_clip_val", "1e6"], "gradient clipping or accumulation is set"),  # never clips: same weights
    pytest.param(["--trainer.callbacks+=test_speed.EveryStep"], "EveryStep.on_after_backward must run on every step",
                 marks=pytest.mark.slow),  # the same fallback as gradient_clip_val's, for another reason
], ids=["gradient_clip_val", "callback"])
def test_steps_per_call_auto_falls_back_to_lightning_steps_with_one_info_line(tiny_data, tmp_path, monkeypatch, options,
                                                                             reason):
    plain_weights, _ = fit(tmp_path / "plain", tiny_data, "--model.steps_per_call", "1")
    said = []
    monkeypatch.setattr(model, "rank_zero_info", said.append)
    workdir = tmp_path / "fallback"
    workdir.mkdir()
    cli = run_in(workdir, "fit", "--config", BASELINE, "--data.data_dir", str(tiny_data), "--trainer.max_epochs", "2",
                 *options)
    assert cli.model.steps_per_call == 1 and cli.model.automatic_optimization
    assert said == [f"timit_lit: model.steps_per_call auto is 1 here, as {reason}: Lightning takes each optimizer "
                     f"step (the same updates, slower at small batches; see docs/speed.md)"]
    for name, tensor in cli.model.state_dict().items():
        assert torch.equal(tensor, plain_weights[name]), name


def test_steps_per_call_auto_leaves_per_step_callbacks_their_steps():
    """Lightning's own callbacks too: weight averaging must update after every step."""
    from pytorch_lightning import Trainer
    from pytorch_lightning.callbacks import EMAWeightAveraging, ModelCheckpoint, TQDMProgressBar

    from timit_lit.models import PhoneClassifier
    from timit_lit.models.train_steps import why_lightning_steps

    def reason(*callbacks, **options):
        trainer = Trainer(callbacks=list(callbacks), logger=False, accelerator="cpu", **options)
        return why_lightning_steps(trainer, PhoneClassifier(), PhoneClassifier)

    assert reason(TQDMProgressBar(), ModelCheckpoint(dirpath="unused")) is None
    assert reason(EMAWeightAveraging()) == "EMAWeightAveraging.on_train_batch_end must run on every step"
    assert reason(ModelCheckpoint(dirpath="unused", every_n_train_steps=10)) == (
        "ModelCheckpoint every_n_train_steps must run on every step")
    assert reason(max_steps=100) == "trainer.max_steps is set (it counts Lightning steps)"
    assert reason(precision="bf16-mixed") == "precision is bf16-mixed"


@pytest.mark.slow
def test_memory_benchmark_measures_a_fit_and_its_predict(tiny_data, tmp_path):
    # benchmarks/memory.py: two whole processes, each with its own peak memory, and the
    # predict really ran on the fit's checkpoint (its CSV has every test row).
    tool = [sys.executable, str(REPO / "benchmarks" / "memory.py"), "--data-dir", str(tiny_data),
            "--config", BASELINE, "--batches", "2", "--keep", str(tmp_path), *QUIET]
    report = subprocess.run(tool, cwd=REPO, capture_output=True, text=True, check=True).stdout
    peaks = {line.split()[0]: float(line.split()[1]) for line in report.splitlines() if line.split()[:1] in (["fit"], ["predict"])}
    assert set(peaks) == {"fit", "predict"} and all(0.1 < peak < 8 for peak in peaks.values()), report
    rows = len(np.load(tiny_data / "test_11.npy", mmap_mode="r"))
    assert len((tmp_path / "prediction.csv").read_text().splitlines()) == rows + 1  # and the header

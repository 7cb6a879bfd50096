"""The quick tier's core: every shipped config (configs/*.yaml, layered as its comment says) fits for
two steps on generated data and predicts a CSV from the checkpoint it wrote.

``python -m pytest -q -m smoke`` runs these and the few other tests marked ``smoke``
(docs/development.md). The networks are shrunk where a config's would take long on a CPU;
everything else is the config's own.
"""

from __future__ import annotations

import numpy as np
import pytest

from helpers import FIGURES, REPO, run_in
from helpers.shuffled_split import mlebench_split

pytestmark = pytest.mark.smoke

CONFIGS = REPO / "configs"
# Two training steps, two validation batches, no validation figures (drawn for baseline and demo only:
# matplotlib's drawing takes longer than the steps; tests/test_tensorboard.py checks the figures).
STEPS = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2",
         "--figures.enabled", "false"]
WITH_FIGURES = [*STEPS[:-2], *FIGURES]
SMALL_RECURRENT = ["--model.hidden_size", "16", "--model.num_layers", "1", "--data.batch_size", "4"]
# The GPU configs on the CPU: the accelerator overridden, no CUDA graph (tests/test_gpu.py runs them as written).
ON_CPU = ["--trainer.accelerator", "cpu"]

# name: (configs layered in order, options after them)
FITS = {
    "baseline": (["baseline.yaml"], WITH_FIGURES),
    "demo": (["demo.yaml"], WITH_FIGURES),
    "strong_mlp": (["strong_mlp.yaml"], STEPS),
    "strong_mlp + viterbi": (["strong_mlp.yaml", "viterbi.yaml"], STEPS),
    # gpu.yaml's steps_per_call counts whole calls of 64 batches: one epoch of the tiny set is one call.
    "baseline + gpu": (["baseline.yaml", "gpu.yaml"], [*ON_CPU, "--model.cuda_graph", "false", *STEPS[:2], *STEPS[4:]]),
    "recurrent": (["recurrent.yaml"], [*STEPS, *SMALL_RECURRENT]),
    "recurrent + recurrent_member": (["recurrent.yaml", "recurrent_member.yaml"], [*STEPS, *SMALL_RECURRENT]),
    "recurrent + recurrent_swept": (["recurrent.yaml", "recurrent_swept.yaml"], [*STEPS, *SMALL_RECURRENT]),
    "recurrent + viterbi_recurrent": (["recurrent.yaml", "viterbi_recurrent.yaml"], [*STEPS, *SMALL_RECURRENT]),
    "recurrent + phone_hmm": (["recurrent.yaml", "phone_hmm.yaml"], [*STEPS, *SMALL_RECURRENT]),
    "recurrent + gpu_recurrent": (["recurrent.yaml", "gpu_recurrent.yaml"], [*STEPS, *SMALL_RECURRENT, *ON_CPU]),
    "conformer": (["conformer.yaml"], [*STEPS, "--model.d_model", "16", "--model.num_heads", "2", "--model.num_layers", "1",
                                       "--data.batch_size", "4"]),
    "mlebench": (["mlebench.yaml"], [*STEPS, *SMALL_RECURRENT, "--trainer.check_val_every_n_epoch", "1"]),
}


@pytest.fixture(scope="module")
def mlebench_data(tiny_data, tmp_path_factory):
    """MLE-bench's shuffled split of the tiny set's training file (what configs/mlebench.yaml reads)."""
    out = tmp_path_factory.mktemp("mlebench")
    mlebench_split(tiny_data, out)
    return out


def fit_and_predict(workdir, data_dir, configs, options, header="Id,Class"):
    """``fit``, then ``predict --ckpt_path last`` with the same configs: the fit's CLI, and the
    CSV's rows as (id, class)."""
    layered = [arg for name in configs for arg in ("--config", str(CONFIGS / name))]
    data = ["--data.data_dir", str(data_dir)]
    fit = run_in(workdir, "fit", *layered, *data, *options)
    assert fit.trainer.global_step > 0
    csv = workdir / "prediction.csv"
    run_in(workdir, "predict", *layered, *data, *options, "--ckpt_path", "last", "--prediction.output_path", str(csv))
    lines = csv.read_text().splitlines()
    assert lines[0] == header
    return fit, np.array([[int(value) for value in line.split(",")[:2]] for line in lines[1:]])


def check_rows(rows: np.ndarray, data_dir) -> None:
    """One row per test row, in the test file's order, each a class the data has."""
    test_rows = len(np.load(data_dir / "test_11.npy", mmap_mode="r"))
    assert np.array_equal(rows[:, 0], np.arange(test_rows))
    assert rows[:, 1].min() >= 0 and rows[:, 1].max() < 39


@pytest.mark.parametrize("name", FITS)
def test_each_shipped_config_fits_and_predicts(name, tiny_data, mlebench_data, tmp_path):
    configs, options = FITS[name]
    data_dir, header = (mlebench_data, "Id,ClassId") if name == "mlebench" else (tiny_data, "Id,Class")  # MLE-bench's
    fit, rows = fit_and_predict(tmp_path, data_dir, configs, options, header)
    check_rows(rows, data_dir)
    if name == "baseline + gpu":  # the model's own steps, 64 to a call, on features kept on the device
        assert fit.model.steps_per_call == 64 and not fit.model.automatic_optimization
        assert fit.datamodule.features_on_device
        rows = len(fit.datamodule.dataset("train"))
        assert fit.trainer.global_step == -(-rows // fit.datamodule.batch_size)  # one optimizer step per batch
    if name == "recurrent + gpu_recurrent":
        assert fit.trainer.precision == "bf16-mixed" and fit.trainer.global_step == 2


def test_ensemble_yaml_predicts_from_two_networks(tiny_data, tmp_path):
    members = []
    for name in ("baseline", "recurrent"):
        configs, options = FITS[name]
        workdir = tmp_path / name
        workdir.mkdir()
        fit_and_predict(workdir, tiny_data, configs, options)
        (last,) = workdir.glob("lightning_logs/version_0/checkpoints/last.ckpt")
        members.append(str(last))
    csv = tmp_path / "ensemble.csv"
    cli = run_in(tmp_path, "predict", "--config", str(CONFIGS / "ensemble.yaml"), "--data.data_dir", str(tiny_data),
                 "--model.checkpoints", f"[{', '.join(members)}]", "--data.eval_batch_size", "8",
                 "--prediction.output_path", str(csv))
    assert len(cli.model.members) == 2
    lines = csv.read_text().splitlines()
    assert lines[0] == "Id,Class"
    check_rows(np.array([[int(v) for v in line.split(",")[:2]] for line in lines[1:]]), tiny_data)


def test_every_shipped_fit_config_is_smoked():
    """A config added to configs/ gets a line above (ensemble.yaml predicts only: tested apart)."""
    smoked = {name for configs, _ in FITS.values() for name in configs} | {"ensemble.yaml"}
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(smoked)

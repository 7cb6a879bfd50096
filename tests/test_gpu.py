"""The GPU recipes on a CUDA device (``python -m pytest -m gpu``; skipped without one).

On the CPU, tests/test_configs.py runs the same compositions with the accelerator overridden.
"""

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from helpers import REPO, run_in
from helpers.host_reads import HOST_READS, OPTIMIZER_CODE, ProfileOneStep, caller, small_recurrent_recipe

pytestmark = pytest.mark.gpu
CONFIGS = REPO / "configs"
SMALL_RECURRENT = ["--model.hidden_size", "32", "--model.num_layers", "2", "--data.batch_size", "4",
                   "--data.eval_batch_size", "5"]


@pytest.mark.parametrize("base", ["baseline.yaml", "strong_mlp.yaml"])
def test_gpu_yaml_trains_the_mlp_configs_with_a_cuda_graph(tiny_data, tmp_path, base):
    cli = run_in(tmp_path, "fit", "--config", str(CONFIGS / base), "--config", str(CONFIGS / "gpu.yaml"),
                 "--data.data_dir", str(tiny_data), "--trainer.max_epochs", "2")
    assert cli.model.device.type == "cuda" and not cli.model.automatic_optimization and cli.model.hparams.cuda_graph
    assert torch.get_float32_matmul_precision() == "high"  # TF32, as gpu.yaml asks
    torch.set_float32_matmul_precision("highest")
    rows = len(cli.datamodule.dataset("train"))
    assert cli.trainer.global_step == 2 * -(-rows // cli.datamodule.batch_size)  # every optimizer step counted
    assert 0 < float(cli.trainer.callback_metrics["val/acc"]) <= 1


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_gpu_recurrent_yaml_fits_decodes_and_predicts(tiny_data, tmp_path, precision):
    if precision == "bf16-mixed" and not torch.cuda.is_bf16_supported():
        pytest.skip("this card has no bfloat16")
    common = ["--config", str(CONFIGS / "recurrent.yaml"), "--config", str(CONFIGS / "gpu_recurrent.yaml"),
              "--data.data_dir", str(tiny_data), *SMALL_RECURRENT, "--trainer.precision", precision,
              "--data.val_ratio", "0.2", "--decoding.enabled", "true"]
    fit = run_in(tmp_path, "fit", *common, "--trainer.max_epochs", "2")
    assert fit.trainer.train_dataloader.pin_memory
    assert 0 < float(fit.trainer.callback_metrics["val/acc_viterbi"]) <= 1
    best = fit.trainer.checkpoint_callback.best_model_path
    out, posteriors = tmp_path / "p.csv", tmp_path / "p.npy"
    run_in(tmp_path, "predict", *common, "--ckpt_path", best, "--prediction.output_path", str(out),
           "--prediction.posteriors_path", str(posteriors))
    n_rows = len(np.load(tiny_data / "test_11.npy", mmap_mode="r"))
    assert out.read_text().count("\n") == n_rows + 1
    np.testing.assert_allclose(np.load(posteriors).sum(axis=1), 1.0, atol=1e-5)


def test_a_recurrent_gpu_training_step_reads_nothing_back(tiny_data, tmp_path):
    """The profiler's count of host reads in one mixed-precision training step on the GPU: only
    Adam's step counts (CPU tensors: no wait for the device), and under 16-mixed the loss
    scaler's check for infinite gradients (torch.amp's GradScaler reads it to skip the step)."""
    data, model = small_recurrent_recipe(tiny_data)
    probe = ProfileOneStep(batch_idx=1)
    trainer = pl.Trainer(accelerator="gpu", devices=1, precision="bf16-mixed" if torch.cuda.is_bf16_supported()
                         else "16-mixed", max_epochs=1, limit_train_batches=2, gradient_clip_val=5.0,
                         callbacks=[probe, probe.closer], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, data)
    allowed = (OPTIMIZER_CODE,) if trainer.precision == "bf16-mixed" else (OPTIMIZER_CODE, "torch/amp/")
    callers = [caller(e) for e in probe.events if e.name in HOST_READS]
    assert [c for c in callers if not any(code in c for code in allowed)] == []

"""The shipped configs compose as their comments say: each GPU config on the configs it
layers on parses and trains a few steps (on the CPU here, the accelerator overridden; on a
GPU as written: tests/test_gpu.py), and an option a network does not take is one line."""

from types import SimpleNamespace

import pytest
import torch

from timit_lit.callbacks import CudaMatmulPrecision

from helpers import REPO, run_in

CONFIGS = REPO / "configs"
ON_CPU = ["--trainer.accelerator", "cpu", "--trainer.max_epochs", "1"]


# baseline.yaml + gpu.yaml, and recurrent.yaml + gpu_recurrent.yaml, fit in the quick tier too (tests/test_smoke.py,
# with these checks): here the rest, slow.
@pytest.mark.parametrize("base", [pytest.param("baseline.yaml", marks=pytest.mark.slow), "strong_mlp.yaml"])
def test_gpu_yaml_on_the_mlp_configs(tiny_data, tmp_path, base):
    cli = run_in(tmp_path, "fit", "--config", str(CONFIGS / base), "--config", str(CONFIGS / "gpu.yaml"),
                 "--data.data_dir", str(tiny_data), *ON_CPU, "--model.cuda_graph", "false")  # CUDA graphs need CUDA
    assert cli.model.steps_per_call == 64 and not cli.model.automatic_optimization  # the model's own steps
    assert cli.datamodule.features_on_device
    # TF32 asked for, and on a CPU nothing changed (tests/test_gpu.py checks a GPU run).
    (matmul,) = [c for c in cli.trainer.callbacks if isinstance(c, CudaMatmulPrecision)]
    assert matmul.float32 == "high" and torch.get_float32_matmul_precision() == "highest"
    rows = len(cli.datamodule.dataset("train"))
    assert cli.trainer.global_step == -(-rows // cli.datamodule.batch_size)  # one optimizer step per batch of rows


@pytest.mark.slow
def test_gpu_recurrent_yaml_on_recurrent_yaml(tiny_data, tmp_path):
    cli = run_in(tmp_path, "fit", "--config", str(CONFIGS / "recurrent.yaml"), "--config",
                 str(CONFIGS / "gpu_recurrent.yaml"), "--data.data_dir", str(tiny_data), *ON_CPU,
                 "--model.hidden_size", "16", "--model.num_layers", "1", "--data.batch_size", "4",
                 "--trainer.limit_train_batches", "2")
    assert cli.trainer.precision == "bf16-mixed" and cli.trainer.global_step == 2


def test_an_option_the_network_does_not_take_is_one_line(tiny_data, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        run_in(tmp_path, "fit", "--config", str(CONFIGS / "recurrent.yaml"), "--config", str(CONFIGS / "gpu.yaml"),
               "--data.data_dir", str(tiny_data))
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["timit_lit: error: model.steps_per_call: the network RecurrentPhoneClassifier takes no such option "
                   "(model.class_path timit_lit.models.RecurrentPhoneClassifier)"]


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_the_matmul_precision_is_set_on_a_cuda_device_only(device):
    trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)))
    try:
        CudaMatmulPrecision("high").setup(trainer, None, "fit")
        assert torch.get_float32_matmul_precision() == ("high" if device == "cuda" else "highest")
    finally:
        torch.set_float32_matmul_precision("highest")

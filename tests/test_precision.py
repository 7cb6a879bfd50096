"""Mixed precision (``--trainer.precision bf16-mixed``) trains, validates, decodes and predicts
both networks on the CPU; what leaves a step for decoding, posteriors or the CSV is float32."""

import numpy as np
import pytest

import timit_lit.models.mlp as mlp_module

from helpers import BASELINE, REPO, run_in, without_data_summary

RECURRENT = ["--config", str(REPO / "configs" / "recurrent.yaml"), "--model.hidden_size", "16", "--model.num_layers", "2",
             "--data.batch_size", "4", "--data.eval_batch_size", "5"]
MLP = ["--config", BASELINE, "--data.batch_size", "256", "--model.lr", "0.002"]
BF16 = ["--trainer.precision", "bf16-mixed"]


@pytest.mark.parametrize("network", [RECURRENT, pytest.param(MLP, marks=pytest.mark.slow)], ids=["recurrent", "mlp"])
def test_bf16_mixed_fits_validates_decodes_and_predicts(tiny_data, tmp_path, network, monkeypatch):
    said = []
    monkeypatch.setattr(mlp_module, "rank_zero_info", said.append)
    common = [*network, "--data.data_dir", str(tiny_data), "--data.val_ratio", "0.2", "--decoding.enabled", "true"]
    fit = run_in(tmp_path, "fit", *common, *BF16, "--trainer.max_epochs", "2")
    metrics = fit.trainer.callback_metrics
    assert fit.trainer.precision == "bf16-mixed"
    assert 0 < float(metrics["val/acc"]) <= 1 and 0 < float(metrics["val/acc_viterbi"]) <= 1
    assert np.isfinite(float(metrics["train/loss"])) and np.isfinite(float(metrics["val/loss"]))
    if network is MLP:  # its own steps need 32-bit precision: Lightning's steps, said in one line
        assert fit.model.automatic_optimization and fit.model.steps_per_call == 1
        assert any("precision is bf16-mixed" in line for line in said)
    best = fit.trainer.checkpoint_callback.best_model_path

    # The same checkpoint tested in bf16 and in float32: the same frames, nearly the same accuracy.
    test_bf16 = run_in(tmp_path, "test", *common, *BF16, "--ckpt_path", best).trainer.callback_metrics
    test_fp32 = run_in(tmp_path, "test", *common, "--ckpt_path", best).trainer.callback_metrics
    for key in ("test/acc", "test/acc_viterbi"):
        assert float(test_bf16[key]) == pytest.approx(float(test_fp32[key]), abs=0.03), key

    out, posteriors = tmp_path / "bf16.csv", tmp_path / "bf16.npy"
    run_in(tmp_path, "predict", *common, *BF16, "--ckpt_path", best, "--prediction.output_path", str(out),
           "--prediction.posteriors_path", str(posteriors))
    n_rows = len(np.load(tiny_data / "test_11.npy", mmap_mode="r"))
    assert out.read_text().count("\n") == n_rows + 1
    probabilities = np.load(posteriors)
    assert probabilities.shape == (n_rows, 39) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)  # a float32 softmax, not a bf16 one


def test_own_steps_asked_for_under_mixed_precision_is_a_one_line_error(tiny_data, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        run_in(tmp_path, "fit", *MLP, "--data.data_dir", str(tiny_data), *BF16, "--model.steps_per_call", "4",
               "--trainer.max_epochs", "1")
    assert stopped.value.code == 2
    err = without_data_summary(capsys.readouterr().err)
    assert len(err) == 1 and "32-bit precision" in err[0] and "bf16-mixed" in err[0]

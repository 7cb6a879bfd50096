"""Ensembles of checkpoints: averaged posteriors, whatever networks and context widths."""

import numpy as np
import pytest

from helpers import BASELINE, FAST, FIGURES, REPO, run_in

ENSEMBLE = str(REPO / "configs" / "ensemble.yaml")
RECURRENT = str(REPO / "configs" / "recurrent.yaml")


def fit(workdir, *args):
    run_in(workdir, "fit", *args, "--trainer.max_epochs", "1")
    (best,) = (workdir / "lightning_logs" / "version_0" / "checkpoints").glob("epoch=*.ckpt")
    return str(best)


def predict_posteriors(workdir, data, name, *args):
    run_in(workdir, "predict", *args, "--data.data_dir", str(data), "--prediction.output_path", str(workdir / f"{name}.csv"),
           "--prediction.posteriors_path", str(workdir / f"{name}.npy"))
    return (workdir / f"{name}.csv").read_bytes(), np.load(workdir / f"{name}.npy")


def test_an_ensemble_of_one_checkpoint_is_that_checkpoint(tiny_data, best_checkpoint, tmp_path):
    alone = ["--ckpt_path", str(best_checkpoint)]
    one = ["--config", ENSEMBLE, "--model.checkpoints", f"[{best_checkpoint}]"]
    csv_alone, posteriors_alone = predict_posteriors(tmp_path, tiny_data, "alone", *alone)
    csv_one, posteriors_one = predict_posteriors(tmp_path, tiny_data, "one", *one)
    assert csv_one == csv_alone
    np.testing.assert_allclose(posteriors_one, posteriors_alone, rtol=1e-6, atol=1e-7)
    test_alone = run_in(tmp_path, "test", *alone, "--data.data_dir", str(tiny_data)).trainer.callback_metrics
    test_one = run_in(tmp_path, "test", *one, "--data.data_dir", str(tiny_data)).trainer.callback_metrics
    assert float(test_one["test/acc"]) == float(test_alone["test/acc"])
    for name in ("test/per", "test/acc_boundary", "test/acc_inner", "test/errors_at_boundary"):
        assert float(test_one[name]) == float(test_alone[name]), name
    assert float(test_one["test/loss"]) == pytest.approx(float(test_alone["test/loss"]), abs=1e-5)


def test_members_of_different_networks_and_widths_average_their_posteriors(tiny_data, best_checkpoint, tmp_path):
    """An 11-frame MLP, a 21-frame MLP and a recurrent model on centre frames (utterance
    batches): the ensemble's posteriors are the mean of each member's own predictions."""
    (tmp_path / "wide").mkdir(), (tmp_path / "rnn").mkdir()
    wide = fit(tmp_path / "wide", "--config", BASELINE, "--data.data_dir", str(tiny_data), *FAST, "--data.context", "21")
    rnn = fit(tmp_path / "rnn", "--config", RECURRENT, "--data.data_dir", str(tiny_data), "--model.hidden_size", "16",
              "--model.num_layers", "1", "--data.batch_size", "4")
    members = [str(best_checkpoint), wide, rnn]
    own = [predict_posteriors(tmp_path, tiny_data, f"member{i}", "--ckpt_path", m)[1] for i, m in enumerate(members)]
    csv, posteriors = predict_posteriors(tmp_path, tiny_data, "ensemble", "--config", ENSEMBLE,
                                         "--model.checkpoints", f"[{', '.join(members)}]", "--data.eval_batch_size", "3")
    expected = np.mean(own, axis=0)
    np.testing.assert_allclose(posteriors, expected, rtol=1e-5, atol=1e-6)
    lines = csv.decode().splitlines()
    assert lines[0] == "Id,Class" and lines[1:] == [f"{i},{c}" for i, c in enumerate(expected.argmax(1))]
    # test/acc of the ensemble is that of the averaged posteriors.
    labels = np.load(tiny_data / "test_label_11.npy").astype(np.int64)
    metrics = run_in(tmp_path, "test", "--config", ENSEMBLE, "--data.data_dir", str(tiny_data),
                     "--model.checkpoints", f"[{', '.join(members)}]", "--data.eval_batch_size", "3").trainer.callback_metrics
    assert float(metrics["test/acc"]) == pytest.approx(float((expected.argmax(1) == labels).mean()), abs=1e-6)


@pytest.mark.parametrize("case", ["empty", "missing", "fit"])
def test_ensemble_errors_are_one_line(tiny_data, best_checkpoint, tmp_path, capsys, case):
    checkpoints, command, message = {
        "empty": ("[]", "test", "model.checkpoints is empty"),
        "missing": (f"[{best_checkpoint}, {tmp_path / 'nope.ckpt'}]", "test", "nope.ckpt: checkpoint file not found"),
        "fit": (f"[{best_checkpoint}]", "fit", "use it with validate, test or predict"),
    }[case]
    with pytest.raises(SystemExit) as exit_info:
        run_in(tmp_path, command, "--config", ENSEMBLE, "--data.data_dir", str(tiny_data), "--model.checkpoints", checkpoints)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("timit_lit: error:") and message in err


def test_ensemble_validates_on_its_members_split(tiny_data, tmp_path):
    member = fit(tmp_path, "--config", BASELINE, "--data.data_dir", str(tiny_data), *FAST,
                 "--data.split", "utterance", "--data.split_seed", "3")
    alone = run_in(tmp_path, "validate", "--ckpt_path", member, "--data.data_dir", str(tiny_data),
                   "--data.split", "utterance", "--data.split_seed", "3").trainer.callback_metrics
    # No split options given: the ensemble takes its member's.
    ensemble = run_in(tmp_path, "validate", "--config", ENSEMBLE, "--model.checkpoints", f"[{member}]",
                      "--data.data_dir", str(tiny_data), *FIGURES).trainer.callback_metrics
    assert float(ensemble["val/acc"]) == float(alone["val/acc"]) == pytest.approx(float(member[-11:-5]), abs=1e-4)

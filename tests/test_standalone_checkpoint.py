"""A checkpoint is enough to predict and test: no training config needed."""

import numpy as np
import pytest

from helpers import BASELINE, FAST, run_in

# A network and class count unlike the defaults, so that nothing comes out right by chance.
NETWORK = ["--model.hidden_sizes", "[64, 32]", "--model.activation", "relu", "--data.num_classes", "40"]


@pytest.fixture(scope="module")
def checkpoint(tiny_data, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("standalone")
    run_in(workdir, "fit", "--config", BASELINE, "--data.data_dir", str(tiny_data), *FAST, *NETWORK,
           "--trainer.max_epochs", "1")
    return workdir / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"


def test_predict_with_only_the_checkpoint_matches_predict_with_the_config(tiny_data, checkpoint, tmp_path):
    data = ["--data.data_dir", str(tiny_data), "--ckpt_path", str(checkpoint)]
    cli = run_in(tmp_path, "predict", *data, "--prediction.output_path", "bare.csv")
    assert cli.model.hparams.hidden_sizes == [64, 32] and cli.model.hparams.activation == "relu"
    assert cli.datamodule.num_classes == 40 and cli.model.hparams.num_classes == 40
    run_in(tmp_path, "predict", "--config", BASELINE, *NETWORK, *data, "--prediction.output_path", "configured.csv")
    bare = (tmp_path / "bare.csv").read_text()
    assert bare == (tmp_path / "configured.csv").read_text()
    assert bare.count("\n") == len(np.load(tiny_data / "test_11.npy", mmap_mode="r")) + 1


def test_test_with_only_the_checkpoint(tiny_data, checkpoint, tmp_path):
    data = ["--data.data_dir", str(tiny_data), "--ckpt_path", str(checkpoint)]
    bare = run_in(tmp_path, "test", *data).trainer.callback_metrics["test/acc"]
    configured = run_in(tmp_path, "test", "--config", BASELINE, *NETWORK, *data).trainer.callback_metrics["test/acc"]
    assert float(bare) == float(configured)


def test_checkpoint_of_another_data_width_is_a_one_line_error(checkpoint, tmp_path, capsys):
    narrow = tmp_path / "narrow"
    narrow.mkdir()
    np.save(narrow / "test_11.npy", np.zeros((5, 39), dtype=np.float32))
    with pytest.raises(SystemExit) as exit_info:
        run_in(tmp_path, "predict", "--data.data_dir", str(narrow), "--ckpt_path", str(checkpoint))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"timit_lit: error: {checkpoint}: checkpoint does not fit this model and data: net.0.weight is "
                   "(64, 429) in the checkpoint, (64, 39) here (data: 39 features, 40 classes)")

"""The Python API (timit_lit.run): the command line's runs from Python, returning what they made."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import timit_lit
from timit_lit.api import command_line_options

from helpers import BASELINE, REPO


def test_options_are_the_command_lines():
    options = {"trainer": {"max_epochs": 2, "logger": False}, "model": {"hidden_sizes": [8, 4], "lr": 1e-3},
               "data.data_dir": "timit_11", "ckpt_path": "best", "optimizer": {"class_path": "torch.optim.SGD"}}
    assert command_line_options(options) == [
        "--trainer.max_epochs=2", "--trainer.logger=false", "--model.hidden_sizes=[8, 4]", "--model.lr=0.001",
        "--data.data_dir=timit_11", "--ckpt_path=best", '--optimizer={"class_path": "torch.optim.SGD"}']


PLAIN_PROCESS = textwrap.dedent("""
    import json, sys
    import timit_lit
    light = not any(name in sys.modules for name in ("torch", "pytorch_lightning"))
    timit_lit.write_synthetic_timit("data", train_utterances=12, test_utterances=5, seed=1)
    quiet = {"enable_progress_bar": False, "enable_model_summary": False}
    fit = timit_lit.run("fit", config=sys.argv[1], data={"data_dir": "data", "batch_size": 256}, model={"lr": 0.002},
                        trainer={"max_epochs": 2, **quiet})
    test = timit_lit.run("test", sys.argv[1], data={"data_dir": "data"}, ckpt_path=fit.best_checkpoint, trainer=quiet)
    out = timit_lit.run("predict", [sys.argv[1]], data={"data_dir": "data"}, ckpt_path="best",
                        prediction={"output_path": "out/p.csv", "with_phone": True}, trainer=quiet)
    print(json.dumps({
        "light": light,
        "fit": {"best": str(fit.best_checkpoint), "best_score": fit.best_score, "last": str(fit.last_checkpoint),
                "metrics": fit.metrics, "log_dir": str(fit.log_dir), "val_acc": fit.scalars()["val/acc"][1].tolist(),
                "confusion_png": fit.image("val/confusion")[:8].hex(),
                "config": (fit.log_dir / "config.yaml").read_text()},
        "test": {"metrics": test.metrics, "ckpt_path": str(test.ckpt_path), "log_dir": str(test.log_dir)},
        "predict": {"path": str(out.prediction_path), "ckpt_path": str(out.ckpt_path),
                    "columns": {k: v.tolist() for k, v in out.predictions.items()}},
    }))
""")


def test_run_from_a_plain_python_process(tmp_path):
    """fit -> test -> predict from a script: the same runs as the command line's, and their results as values."""
    script = tmp_path / "script.py"
    script.write_text(PLAIN_PROCESS)
    done = subprocess.run([sys.executable, str(script), BASELINE], cwd=tmp_path, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["light"], "import timit_lit imports torch or Lightning"
    fit = result["fit"]
    run = tmp_path / "lightning_logs" / "version_0"
    assert fit["log_dir"] == str(run) and fit["last"] == str(run / "checkpoints" / "last.ckpt")
    # The best checkpoint is the best val/acc's, as the CLI's forced checkpoint callback keeps it.
    assert fit["best_score"] == pytest.approx(max(fit["val_acc"])) and len(fit["val_acc"]) == 2
    assert fit["best"].startswith(str(run / "checkpoints" / "epoch=")) and f"val_acc={fit['best_score']:.4f}" in fit["best"]
    assert {"train/loss", "val/acc", "val/per", "val/acc_boundary"} <= set(fit["metrics"])  # PER and boundaries too
    assert fit["confusion_png"] == b"\x89PNG\r\n\x1a\n".hex()
    # The network's class path is its home module's, whatever timit_lit exports.
    assert "class_path: timit_lit.models.PhoneClassifier\n" in fit["config"]
    # test scores the checkpoint and logs into its run.
    assert result["test"]["ckpt_path"] == fit["best"] and result["test"]["log_dir"] == str(run)
    assert 0 <= result["test"]["metrics"]["test/acc"] <= 1 and "test/per" in result["test"]["metrics"]
    # predict (ckpt_path best: the same checkpoint) returns the CSV's columns, as written.
    predict = result["predict"]
    assert (tmp_path / predict["path"]).resolve() == (tmp_path / "out" / "p.csv")
    assert (tmp_path / predict["ckpt_path"]).resolve() == (tmp_path / fit["best"]).resolve()
    lines = (tmp_path / "out" / "p.csv").read_text().splitlines()
    columns = predict["columns"]
    assert lines[0] == "Id,Class,Phone" and list(columns) == ["Id", "Class", "Phone"]
    assert lines[1:] == [f"{i},{c},{p}" for i, c, p in zip(columns["Id"], columns["Class"], columns["Phone"])]
    assert columns["Id"] == list(range(len(np.load(tmp_path / "data" / "test_11.npy", mmap_mode="r"))))


def test_bad_input_raises_the_clis_one_line_error(tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(timit_lit.InputError, match=r"^model\.activation: tanh is not one of 'sigmoid', 'relu', 'gelu'$"):
        timit_lit.run("fit", config=BASELINE, data={"data_dir": str(tiny_data)}, model={"activation": "tanh"})
    with pytest.raises(timit_lit.InputError, match=r"nowhere: data folder not found"):
        timit_lit.run("fit", config=BASELINE, data={"data_dir": str(tmp_path / "nowhere")})
    with pytest.raises(timit_lit.InputError, match=r"lightning_logs: --ckpt_path best found no"):
        timit_lit.run("predict", REPO / "configs" / "baseline.yaml", data={"data_dir": str(tiny_data)}, ckpt_path="best")
    with pytest.raises(timit_lit.InputError, match=r"subcommand 'train': expected one of fit, validate, test, predict"):
        timit_lit.run("train")
    assert not list(tmp_path.iterdir())

"""Files from others: a checkpoint never runs or imports code; outputs are checked before the work."""

import errno
import importlib
import os
import shutil
import subprocess
import sys
import uuid

import numpy as np
import pytest
import torch

import timit_lit.atomic
from timit_lit.models import PhoneModel

from helpers import BASELINE, FAST, QUIET, REPO, fails_with, run_in

ENSEMBLE = str(REPO / "configs" / "ensemble.yaml")


def hostile_module(tmp_path, monkeypatch):
    """An importable module of a PhoneModel subclass whose import writes a marker file.
    Returns (module name, marker)."""
    name = f"hostile_{uuid.uuid4().hex[:8]}"
    marker = tmp_path / f"{name}.imported"
    (tmp_path / f"{name}.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from timit_lit.models import PhoneClassifier\n"
        "class Net(PhoneClassifier):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return name, marker


def altered(checkpoint, path, hparams=None, entries=None):
    """A copy of ``checkpoint`` at ``path`` with some hyper_parameters or top-level entries replaced."""
    saved = torch.load(checkpoint, weights_only=True)
    if hparams is not None:
        saved["hyper_parameters"] = {**saved["hyper_parameters"], **hparams}
    saved.update(entries or {})
    torch.save(saved, path)
    return path


def entry_points(tiny_data, checkpoint, workdir):
    """Every way a checkpoint file comes into a run, as command lines."""
    data = ["--data.data_dir", str(tiny_data)]
    last = workdir / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(checkpoint, last)
    return {
        "predict": ["predict", "--config", BASELINE, *data, "--ckpt_path", str(checkpoint)],
        "test": ["test", "--config", BASELINE, *data, "--ckpt_path", str(checkpoint)],
        "validate": ["validate", "--config", BASELINE, *data, "--ckpt_path", str(checkpoint)],
        "fit resume": ["fit", "--config", BASELINE, *data, "--ckpt_path", str(checkpoint)],
        "fit --ckpt_path last": ["fit", "--config", BASELINE, *data, "--ckpt_path", "last"],
        "ensemble member": ["test", "--config", ENSEMBLE, *data, "--model.checkpoints", f"[{checkpoint}]"],
    }


def test_a_checkpoint_naming_another_module_imports_nothing(tiny_data, best_checkpoint, tmp_path, monkeypatch, capsys):
    name, marker = hostile_module(tmp_path, monkeypatch)
    hostile = altered(best_checkpoint, tmp_path / "shared.ckpt", {"_class_path": f"{name}.Net"})
    for entry, args in entry_points(tiny_data, hostile, tmp_path / "run").items():
        line = fails_with(tmp_path / "run", capsys, *args)
        assert ".ckpt" in line and f"{name}.Net" in line and "never imported" in line, (entry, line)
        assert not marker.exists() and name not in sys.modules, entry


def test_a_checkpoint_of_your_own_network_loads_once_you_name_it(tiny_data, best_checkpoint, tmp_path, monkeypatch):
    """The user's own module, named on the command line, is the user's choice: its checkpoints work."""
    name, marker = hostile_module(tmp_path, monkeypatch)
    own = altered(best_checkpoint, tmp_path / "own.ckpt", {"_class_path": f"{name}.Net"})
    try:
        cli = run_in(tmp_path, "predict", "--config", BASELINE, "--data.data_dir", str(tiny_data), "--model", f"{name}.Net",
                     "--ckpt_path", str(own))
        assert type(cli.model).__name__ == "Net" and marker.exists()
        assert (tmp_path / "prediction.csv").is_file()
    finally:
        sys.modules.pop(name, None)


def test_a_checkpoint_saved_before_the_package_layout_loads(tiny_data, best_checkpoint, tmp_path):
    """Checkpoints name their network by the class path it had when they were saved; those
    from before the package layout (timit_lit.model, .recurrent, .ensemble) still load."""
    old = altered(best_checkpoint, tmp_path / "old.ckpt", {"_class_path": "timit_lit.model.PhoneClassifier"})
    data = ["--data.data_dir", str(tiny_data)]
    scores = {}
    for name, checkpoint in (("now", best_checkpoint), ("old", old)):
        cli = run_in(tmp_path, "test", "--config", BASELINE, *data, "--ckpt_path", str(checkpoint))
        assert type(cli.model).__name__ == "PhoneClassifier"
        scores[name] = float(cli.trainer.callback_metrics["test/acc"])
        run_in(tmp_path, "predict", "--config", BASELINE, *data, "--ckpt_path", str(checkpoint),
               "--prediction.output_path", f"{name}.csv")
    assert scores["old"] == scores["now"]
    assert (tmp_path / "old.csv").read_text() == (tmp_path / "now.csv").read_text()
    cli = run_in(tmp_path, "test", "--config", ENSEMBLE, *data, "--model.checkpoints", f"[{old}]")
    assert float(cli.trainer.callback_metrics["test/acc"]) == scores["now"]
    assert "timit_lit.model" not in sys.modules


class Payload:
    """Unpickling this runs a shell command that writes ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.smoke
@pytest.mark.parametrize("entry", ["predict", "ensemble member"])
def test_a_pickled_payload_never_runs(entry, tiny_data, best_checkpoint, tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    hostile = altered(best_checkpoint, tmp_path / "payload.ckpt", entries=dict(extra=Payload(marker)))
    line = fails_with(tmp_path, capsys, *entry_points(tiny_data, hostile, tmp_path)[entry])
    assert "payload.ckpt: not a readable checkpoint: it holds a pickled object" in line and "system" in line, line
    assert not marker.exists()


def test_a_real_process_refuses_the_foreign_class_without_importing_it(tiny_data, best_checkpoint, tmp_path):
    name = f"hostile_{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "imported"
    (tmp_path / f"{name}.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Anything:\n    pass\n")
    hostile = altered(best_checkpoint, tmp_path / "shared.ckpt", {"_class_path": f"{name}.Anything"})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)])}
    result = subprocess.run([sys.executable, "-m", "timit_lit", "predict", "--config", BASELINE, "--data.data_dir",
                             str(tiny_data), "--ckpt_path", str(hostile), *QUIET],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"timit_lit: error: {hostile}: names the network")
    assert not marker.exists()


HYPERPARAMETER_CASES = {
    # id: (hyper_parameters to set, or top-level entries; words the message must hold)
    "value of the wrong type": (dict(hidden_sizes="wide"), {}, ["hidden_sizes", "tuple", "wide"]),
    "unknown argument": (dict(extra=1), {}, ["hyper_parameters.extra is not an argument of timit_lit.models.PhoneClassifier"]),
    "nested class path": (dict(hidden_sizes={"class_path": "os.system"}), {},
                          ["hyper_parameters.hidden_sizes.class_path names a class", "os.system"]),
    "class path not a string": (dict(_class_path=7), {}, ["names the network 7"]),
    "not a PhoneModel": (dict(_class_path="torch.nn.Linear"), {}, ["torch.nn.Linear", "not a PhoneModel"]),
    "hyper_parameters a list": (None, dict(hyper_parameters=[1, 2]), ["hyper_parameters is not a mapping"]),
    "state_dict not tensors": (None, dict(state_dict={"net.0.weight": "x"}), ["state_dict is not a mapping of names to tensors"]),
    "datamodule value": (None, dict(datamodule_hyper_parameters={"context": "wide"}), ["data.context", "int", "wide"]),
}


@pytest.mark.parametrize("case", HYPERPARAMETER_CASES, ids=list(HYPERPARAMETER_CASES))
def test_bad_saved_settings_give_one_line(case, tiny_data, best_checkpoint, tmp_path, capsys):
    hparams, entries, words = HYPERPARAMETER_CASES[case]
    bad = altered(best_checkpoint, tmp_path / "bad.ckpt", hparams, entries)
    line = fails_with(tmp_path, capsys, "predict", "--config", BASELINE, "--data.data_dir", str(tiny_data), "--ckpt_path", str(bad))
    assert "bad.ckpt: " in line
    for word in words:
        assert word in line, line


def test_a_bad_saved_value_of_an_ensemble_member_gives_one_line(tiny_data, best_checkpoint, tmp_path, capsys):
    bad = altered(best_checkpoint, tmp_path / "member.ckpt", dict(hidden_sizes="wide"))
    line = fails_with(tmp_path, capsys, "test", "--config", ENSEMBLE, "--data.data_dir", str(tiny_data),
                      "--model.checkpoints", f"[{best_checkpoint}, {bad}]")
    assert "member.ckpt: a saved hyperparameter does not parse: hidden_sizes" in line


# Outputs: checked before any batch is predicted, written whole or not at all.


@pytest.fixture
def count_batches(monkeypatch):
    """The number of batches predicted so far, as a one-item list."""
    count, predict_step = [0], PhoneModel.predict_step

    def counted(self, *args, **kwargs):
        count[0] += 1
        return predict_step(self, *args, **kwargs)

    monkeypatch.setattr(PhoneModel, "predict_step", counted)
    return count


def predict_args(tiny_data, best_checkpoint, *args):
    return ["predict", "--config", BASELINE, "--data.data_dir", str(tiny_data), "--ckpt_path", str(best_checkpoint), *args]


def test_a_folder_at_the_csv_path_fails_before_predicting(tiny_data, best_checkpoint, tmp_path, capsys, count_batches):
    (tmp_path / "out.csv").mkdir()
    line = fails_with(tmp_path, capsys, *predict_args(tiny_data, best_checkpoint, "--prediction.output_path", "out.csv"))
    assert "out.csv: is a folder; prediction.output_path must name a file" in line
    assert count_batches[0] == 0


def test_an_unwritable_posteriors_folder_fails_before_predicting(tiny_data, best_checkpoint, tmp_path, capsys, count_batches):
    (tmp_path / "results").write_text("a file where a folder should be")
    line = fails_with(tmp_path, capsys, *predict_args(tiny_data, best_checkpoint, "--prediction.posteriors_path",
                                                      "results/posteriors.npy"))
    assert "results/posteriors.npy: results is a file, not a folder" in line
    assert count_batches[0] == 0 and not (tmp_path / "prediction.csv").exists()


def test_missing_output_folders_are_made(tiny_data, best_checkpoint, tmp_path):
    run_in(tmp_path, *predict_args(tiny_data, best_checkpoint, "--prediction.output_path", "a/b/p.csv",
                                   "--prediction.posteriors_path", "c/d/p.npy"))
    assert (tmp_path / "a/b/p.csv").is_file() and np.load(tmp_path / "c/d/p.npy").ndim == 2


class FullDisk:
    """A file that takes a few bytes, then fails as a full disk does."""

    def __init__(self, file):
        self.file = file

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()

    def write(self, data):
        self.file.write(data[:10])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def writelines(self, lines):
        self.write("".join(lines))


@pytest.mark.parametrize("target", ["prediction.csv", "posteriors.npy"])
def test_a_full_disk_keeps_the_previous_file(target, tiny_data, best_checkpoint, tmp_path, capsys, monkeypatch):
    previous = tmp_path / target
    previous.write_bytes(b"the previous run's file\n")

    def full_open(path, mode="r", **kwargs):
        file = open(path, mode, **kwargs)
        return FullDisk(file) if os.path.basename(path).startswith(f".{target}.tmp") else file

    monkeypatch.setattr(timit_lit.atomic, "open", full_open, raising=False)
    with pytest.raises(SystemExit) as exit_info:
        run_in(tmp_path, *predict_args(tiny_data, best_checkpoint, "--prediction.posteriors_path", "posteriors.npy"))
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "Traceback" not in err
    assert f"timit_lit: error: {target}: cannot write (No space left on device)" in err
    assert previous.read_bytes() == b"the previous run's file\n"
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_a_full_disk_during_a_checkpoint_save_keeps_the_previous_one(tiny_data, tmp_path, capsys, monkeypatch):
    fit = ["fit", "--config", BASELINE, "--data.data_dir", str(tiny_data), "--model.hidden_sizes", "[64]"]
    run_in(tmp_path, *fit, "--trainer.max_epochs", "1")
    checkpoints = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    before = {p.name: p.read_bytes() for p in checkpoints.iterdir()}
    assert "last.ckpt" in before

    def full_open(path, mode="r", **kwargs):
        file = open(path, mode, **kwargs)
        return FullDisk(file) if ".ckpt.tmp" in os.path.basename(path) else file

    monkeypatch.setattr(timit_lit.atomic, "open", full_open, raising=False)
    with pytest.raises(SystemExit) as exit_info:
        run_in(tmp_path, *fit, "--trainer.max_epochs", "2", "--ckpt_path", "last")
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("timit_lit: error:")]
    assert exit_info.value.code == 1 and "Traceback" not in err and len(errors) == 1, err
    assert ".ckpt: cannot write the checkpoint (No space left on device); nothing written, any previous file kept" in errors[0]
    assert {p.name: p.read_bytes() for p in checkpoints.iterdir()} == before  # no temporary file left, none changed


def damage_optimizer(key, value):
    def damage(checkpoint):
        checkpoint["optimizer_states"][0][key] = value(checkpoint["optimizer_states"][0][key])
    return damage


def damage_loop(*keys, value):
    def damage(checkpoint):
        entry = checkpoint["loops"]["fit_loop"]
        for key in keys[:-1]:
            entry = entry[key]
        if value is None:
            del entry[keys[-1]]
        else:
            entry[keys[-1]] = value
    return damage


TRAINING_STATE_CASES = {
    # id: (what to do to a saved checkpoint, words the message must hold)
    "a moment of the wrong shape": (damage_optimizer("state", lambda s: {**s, 2: {**s[2], "exp_avg": s[2]["exp_avg"][:, :-1]}}),
                                    "optimizer_states[0].state[2].exp_avg is (512, 1023), its parameter (512, 1024)"),
    "a group without its parameters": (damage_optimizer("param_groups", lambda g: [{k: v for k, v in g[0].items() if k != "params"}]),
                                       "optimizer_states[0].param_groups[0] has no list of parameter numbers"),
    "a learning rate that is text": (damage_optimizer("param_groups", lambda g: [{**g[0], "lr": "fast"}]),
                                     "optimizer_states[0].param_groups[0].lr is 'fast', not a number"),
    "state for no parameter": (damage_optimizer("state", lambda s: {**s, 99: {}}), "optimizer_states[0].state[99] belongs to no parameter"),
    "no optimizer states": (lambda c: c.update(optimizer_states=[]), "optimizer_states is 0 values, where this run has 1"),
    "a scheduler this run lacks": (lambda c: c.update(lr_schedulers=[{"last_epoch": 3}]), "lr_schedulers is 1 values, where this run has 0"),
    "a loop count that is text": (damage_loop("epoch_progress", "current", "completed", value="one"),
                                  "loops.fit_loop.epoch_progress.current.completed is 'one', not an integer"),
    "a loop entry missing": (damage_loop("epoch_loop.batch_progress", value=None), "loops.fit_loop has no epoch_loop.batch_progress"),
    "loops not a mapping": (lambda c: c.update(loops=[1]), "its loops entry holds no fit_loop"),
}


@pytest.mark.parametrize("case", TRAINING_STATE_CASES, ids=list(TRAINING_STATE_CASES))
def test_a_damaged_training_state_stops_a_resume_in_one_line(case, tiny_data, best_checkpoint, tmp_path, capsys):
    """Checksums valid, weights fine, but what Lightning restores besides them damaged:
    Lightning and torch would stop with a traceback or, worse, take it."""
    damage, words = TRAINING_STATE_CASES[case]
    saved = torch.load(best_checkpoint, weights_only=True)
    damage(saved)
    bad = tmp_path / "resume.ckpt"
    torch.save(saved, bad)
    written = bad.read_bytes()
    line = fails_with(tmp_path, capsys, "fit", "--config", BASELINE, "--data.data_dir", str(tiny_data), *FAST,
                      "--trainer.max_epochs", "3", "--ckpt_path", str(bad))
    assert line == f"timit_lit: error: {bad}: damaged checkpoint ({words}); fit cannot resume from it"
    assert bad.read_bytes() == written and not list(tmp_path.glob("lightning_logs/*/checkpoints/*"))


CALLABLE_NETWORK = """
from typing import Callable, Optional
from timit_lit.models import PhoneClassifier
class Net(PhoneClassifier):
    def __init__(self, *args, act: Optional[Callable] = None, kind: Optional[type] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.act = act
"""


def test_a_checkpoint_cannot_make_jsonargparse_import_what_a_callable_argument_names(
        tiny_data, best_checkpoint, tmp_path, monkeypatch, capsys):
    """jsonargparse takes a dotted name for an argument typed Callable, a class or a type, and
    imports it: a network with such an argument (the user's own; none of the project's has one)
    must not let its checkpoints name code."""
    name, marker = hostile_module(tmp_path, monkeypatch)
    network = f"network_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{network}.py").write_text(CALLABLE_NETWORK)
    try:
        importlib.import_module(network)  # the user's own network, as naming it in a config does
        own = altered(best_checkpoint, tmp_path / "own.ckpt", {"_class_path": f"{network}.Net", "act": None})
        run_in(tmp_path, *predict_args(tiny_data, own))  # the network's own checkpoints load
        cases = [("act", f"{name}.Net", "Optional[Callable]"), ("act", "os.system", "Optional[Callable]"),
                 ("kind", f"{name}.Net", "Optional[type]"), ("act", [f"{name}.Net"], "Optional[Callable]")]
        for key, value, typed in cases:
            hostile = altered(best_checkpoint, tmp_path / "shared.ckpt", {"_class_path": f"{network}.Net", key: value})
            entries = entry_points(tiny_data, hostile, tmp_path / "run")
            for entry in ("predict", "fit resume", "ensemble member") if key == "act" and value == "os.system" else ("predict",):
                line = fails_with(tmp_path / "run", capsys, *entries[entry])
                assert f"shared.ckpt: hyper_parameters.{key} is {value!r}, for an argument typed {typed}, which would import" in line, (entry, line)
                assert not marker.exists() and name not in sys.modules, entry
    finally:
        sys.modules.pop(network, None)

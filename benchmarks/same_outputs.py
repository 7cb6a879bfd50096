"""Whether a change of the code changed what it computes: the same checkpoints, the same CSVs and metrics.

Run ``--write DIR`` at the old commit: it generates two tiny data folders (the course's layout,
and an MLE-bench-style one whose rows are shuffled across train and test), fits tiny
checkpoints (the MLP, the recurrent network, an ensemble of both, the recurrent network on
the shuffled folder), then predicts and tests with each (Viterbi and the phone decoder where
they apply) and stores the CSVs, the posteriors and the metrics in DIR. Run ``--check DIR`` at
the new code: it predicts and tests again with DIR's checkpoints and data, compares bytes and
metrics, prints what differs and exits 1 on any difference.

    git worktree add --detach ../base 009882e && cp benchmarks/same_outputs.py ../base/benchmarks/
    (cd ../base && PYTHONPATH=$PWD python benchmarks/same_outputs.py --write /tmp/same)
    PYTHONPATH=$PWD python benchmarks/same_outputs.py --check /tmp/same

Everything runs on the CPU, in this process, through ``timit_lit.cli.main`` (the command line).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from timit_lit.cli import main
from timit_lit.synthetic import write_synthetic_timit

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.accelerator=cpu"]
SMALL_RECURRENT = ["--model.init_args.hidden_size", "32", "--model.init_args.num_layers", "1",
                   "--model.init_args.lr", "0.02", "--trainer.max_epochs", "8", "--data.batch_size", "2"]


def _shuffled_folder(src: Path, out: Path, seed: int = 0) -> None:
    """MLE-bench's split of ``src``'s training rows: shuffled, about a quarter to test, no test labels."""
    features, labels = np.load(src / "train_11.npy"), np.load(src / "train_label_11.npy")
    permutation = np.random.RandomState(seed).permutation(len(features))
    n_test = math.ceil(0.2685 * len(features))
    test, train = permutation[:n_test], permutation[n_test:]
    out.mkdir(parents=True)
    np.save(out / "train_11.npy", features[train])
    np.save(out / "train_label_11.npy", labels[train])
    np.save(out / "test_11.npy", features[test])


def _fit(workdir: Path, name: str, args: list[str]) -> Path:
    """Fit into ``workdir/name`` and return the checkpoint it ends with (``last.ckpt``)."""
    root = workdir / name
    main(["fit", *args, "--trainer.default_root_dir", str(root), *QUIET])
    (last,) = root.glob("lightning_logs/version_0/checkpoints/last.ckpt")
    return last


def _checkpoints(dir: Path) -> None:
    """The data and tiny checkpoints every comparison uses (written once, by ``--write``)."""
    data, shuffled = dir / "data", dir / "shuffled"
    write_synthetic_timit(data, train_utterances=12, test_utterances=5, seed=1)
    _shuffled_folder(data, shuffled)
    work = dir / "fits"
    ckpts = dir / "checkpoints"
    ckpts.mkdir()
    made = {
        "mlp": _fit(work, "mlp", ["--config", str(CONFIGS / "demo.yaml"), "--data.data_dir", str(data),
                                  "--data.batch_size", "64", "--model.hidden_sizes", "[64]", "--model.lr", "0.003",
                                  "--trainer.max_epochs", "6"]),
        "recurrent": _fit(work, "recurrent", ["--config", str(CONFIGS / "recurrent.yaml"), "--data.data_dir", str(data),
                                              "--data.val_ratio", "0.2", *SMALL_RECURRENT]),
        "mlebench": _fit(work, "mlebench", ["--config", str(CONFIGS / "mlebench.yaml"), "--data.data_dir", str(shuffled),
                                            "--trainer.check_val_every_n_epoch", "1", *SMALL_RECURRENT]),
    }
    for name, path in made.items():
        shutil.copy2(path, ckpts / f"{name}.ckpt")
    shutil.rmtree(work)


def _commands(dir: Path, out: Path) -> dict[str, list[str]]:
    """Each command compared, by name; predictions go to ``out``."""
    data, shuffled, ckpts = str(dir / "data"), str(dir / "shuffled"), dir / "checkpoints"
    mlp, recurrent, mlebench = (str(ckpts / f"{n}.ckpt") for n in ("mlp", "recurrent", "mlebench"))
    ensemble = ["--config", str(CONFIGS / "ensemble.yaml"), "--model.checkpoints", json.dumps([mlp, recurrent]),
                "--data.eval_batch_size", "64"]  # (no --ckpt_path: its members are its checkpoints)
    viterbi = ["--config", str(CONFIGS / "viterbi.yaml")]
    viterbi_recurrent = ["--config", str(CONFIGS / "viterbi_recurrent.yaml")]
    phone_hmm = ["--config", str(CONFIGS / "phone_hmm.yaml")]

    def predict(name: str, *args: str, posteriors: bool = False) -> list[str]:
        extra = ["--prediction.posteriors_path", str(out / f"{name}.npy")] if posteriors else []
        return ["predict", *args, "--prediction.output_path", str(out / f"{name}.csv"), *extra]

    return {
        "predict_mlp": predict("predict_mlp", "--data.data_dir", data, "--ckpt_path", mlp, posteriors=True),
        "predict_mlp_viterbi": predict("predict_mlp_viterbi", *viterbi, "--data.data_dir", data, "--ckpt_path", mlp),
        "predict_mlp_phone_hmm": predict("predict_mlp_phone_hmm", *phone_hmm, "--data.data_dir", data, "--ckpt_path", mlp),
        "predict_mlp_train_file": predict("predict_mlp_train_file", "--data.data_dir", data, "--ckpt_path", mlp,
                                          "--data.predict_file", "train_11.npy", posteriors=True),
        "predict_recurrent_viterbi": predict("predict_recurrent_viterbi", *viterbi_recurrent, "--data.data_dir", data,
                                             "--ckpt_path", recurrent, posteriors=True),
        "predict_ensemble_viterbi": predict("predict_ensemble_viterbi", *ensemble, *viterbi_recurrent,
                                            "--data.data_dir", data, posteriors=True),
        "predict_mlebench": predict("predict_mlebench", "--config", str(CONFIGS / "mlebench.yaml"),
                                    "--data.data_dir", shuffled, "--ckpt_path", mlebench, posteriors=True),
        "test_mlp": ["test", "--data.data_dir", data, "--ckpt_path", mlp, "--data.val_ratio", "0.2"],
        "test_mlp_viterbi": ["test", *viterbi, "--data.data_dir", data, "--ckpt_path", mlp],
        "test_mlp_phone_hmm": ["test", *phone_hmm, "--data.data_dir", data, "--ckpt_path", mlp],
        "test_recurrent_viterbi": ["test", *viterbi_recurrent, "--data.data_dir", data, "--ckpt_path", recurrent],
        "test_ensemble_viterbi": ["test", *ensemble, *viterbi_recurrent, "--data.data_dir", data],
        "validate_mlp_viterbi": ["validate", *viterbi, "--data.data_dir", data, "--ckpt_path", mlp],
        "validate_mlebench": ["validate", "--config", str(CONFIGS / "mlebench.yaml"), "--data.data_dir", shuffled,
                              "--ckpt_path", mlebench],
    }


def _run_all(dir: Path, out: Path) -> dict[str, dict[str, str]]:
    """Run every command, predictions into ``out``; return each one's metrics (``repr`` of the floats)."""
    metrics = {}
    for name, command in _commands(dir, out).items():
        print(f"same_outputs: {name}", file=sys.stderr, flush=True)
        with contextlib.redirect_stdout(io.StringIO()):  # the tables Lightning prints; the values are compared
            cli = main([*command, "--trainer.logger", "false", *QUIET])
        metrics[name] = {key: repr(float(value)) for key, value in sorted(cli.trainer.callback_metrics.items())
                         if value.numel() == 1}
    return metrics


def write(dir: Path) -> None:
    if dir.exists() and any(dir.iterdir()):
        raise SystemExit(f"same_outputs: {dir} is not empty")
    dir.mkdir(parents=True, exist_ok=True)
    _checkpoints(dir)
    out = dir / "outputs"
    out.mkdir()
    metrics = _run_all(dir, out)
    (dir / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    print(f"same_outputs: wrote {len(metrics)} commands' outputs to {dir}")


def check(dir: Path) -> int:
    expected = json.loads((dir / "metrics.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        metrics = _run_all(dir, out)
        differences = []
        for name in expected:
            if metrics.get(name) != expected[name]:
                old, new = expected[name], metrics.get(name, {})
                for key in sorted(set(old) | set(new)):
                    if old.get(key) != new.get(key):
                        differences.append(f"{name}: {key} was {old.get(key)}, now {new.get(key)}")
        for path in sorted((dir / "outputs").iterdir()):
            new = out / path.name
            if not new.is_file():
                differences.append(f"{path.name}: not written")
            elif new.read_bytes() != path.read_bytes():
                differences.append(f"{path.name}: different bytes")
        compared = len(list((dir / "outputs").iterdir()))
    for line in differences:
        print(f"same_outputs: DIFFERS: {line}")
    print(f"same_outputs: {len(expected)} commands, {compared} files: "
          + (f"{len(differences)} differences" if differences else "the same metrics and bytes"))
    return 1 if differences else 0


def main_(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--write", type=Path, metavar="DIR", help="fit, predict and test; keep it all in DIR (at the old code)")
    what.add_argument("--check", type=Path, metavar="DIR", help="predict and test with DIR's checkpoints and compare")
    a = parser.parse_args(argv)
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    if a.write:
        write(a.write)
        return 0
    return check(a.check)


if __name__ == "__main__":
    raise SystemExit(main_())

"""The results ladder of docs/results.md, end to end: fit each shipped config, then test its best checkpoint.

    python benchmarks/ladder.py --data ../data/replica --out ../runs/ladder          # CPU
    python benchmarks/ladder.py --data ../data/replica --out ../runs/ladder --gpu    # one GPU

Rungs, in order: ``baseline``, ``strong_mlp`` (+ ``viterbi.yaml``), ``recurrent``
(+ ``viterbi_recurrent.yaml``), ``recurrent_swept`` (``recurrent_swept.yaml`` layered on
``recurrent.yaml``; decoded too), ``conformer`` (+ ``viterbi_recurrent.yaml``) and ``ensemble`` of the
ENSEMBLE_MEMBERS' checkpoints (+ ``viterbi_recurrent.yaml``); ``recurrent_member`` (the earlier
ensemble's member, ``recurrent_member.yaml`` on ``recurrent.yaml``) when asked for.
``--rungs`` picks some (an ensemble needs its members' rungs in the same run). Each command is a fresh ``python -m timit_lit``-equivalent
process, timed from start to exit; its metrics come back as JSON on its last line
(decoded rungs report ``test/acc_viterbi``). With ``--gpu`` each rung layers its GPU config
(docs/speed.md, GPU recipes): ``configs/gpu.yaml`` on the MLP rungs, ``configs/gpu_recurrent.yaml``
on the recurrent ones; the Conformer runs on the GPU as it is. ``--fit-args`` are appended to every fit (e.g.
``"--trainer.max_epochs 1"`` for a smoke run). Prints a Markdown table and writes
``OUT/ladder.json``. The test split must have labels (the replica's has).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
ENSEMBLE_MEMBERS = ("conformer", "recurrent")  # the pair configs/ensemble.yaml's comment names
# With --gpu: the GPU config layered on each base config (docs/speed.md, GPU recipes); the Conformer has none.
GPU_CONFIGS = {"baseline.yaml": "gpu.yaml", "strong_mlp.yaml": "gpu.yaml", "recurrent.yaml": "gpu_recurrent.yaml"}
# Each fitted rung: (config, decoder layered for a second test or "", configs layered on the first), in order.
FITTED = {
    "baseline": ("baseline.yaml", ""),
    "strong_mlp": ("strong_mlp.yaml", "viterbi.yaml"),
    "recurrent": ("recurrent.yaml", "viterbi_recurrent.yaml"),
    "recurrent_swept": ("recurrent.yaml", "viterbi_recurrent.yaml", "recurrent_swept.yaml"),
    "recurrent_member": ("recurrent.yaml", "", "recurrent_member.yaml"),
    "conformer": ("conformer.yaml", "viterbi_recurrent.yaml"),
}
RUNGS = ("baseline", "strong_mlp", "recurrent", "recurrent_swept", "conformer", "ensemble")  # the default

# Runs one timit_lit command and prints what the ladder needs as JSON on its last line.
RUNNER = """
import json, sys
from timit_lit.cli import main
args, sys.argv = sys.argv[1:], sys.argv[:1]
cli = main(args)
trainer, checkpoint = cli.trainer, cli.trainer.checkpoint_callback
result = {name: float(value) for name, value in trainer.callback_metrics.items()}
if args[0] == "fit":
    score = checkpoint.best_model_score  # None for a run without validation (val_ratio 0): its last epoch
    result.update(epochs=trainer.current_epoch, best_path=checkpoint.best_model_path,
                  best_val_acc=None if score is None else float(score))
print("LADDER " + json.dumps(result))
"""


def run(log: Path, subcommand: str, *args: str) -> tuple[dict, float]:
    """One timit_lit command in its own process: (its metrics, wall seconds). Output goes to ``log``."""
    command = [sys.executable, "-c", RUNNER, subcommand, *args]
    started = time.perf_counter()
    with open(log, "w") as out:
        out.write(shlex.join(command[:1] + ["-m", "timit_lit", subcommand, *args]) + "\n")
        out.flush()
        finished = subprocess.run(command, stdout=subprocess.PIPE, stderr=out, text=True, cwd=log.parent)
    seconds = time.perf_counter() - started
    out_lines = finished.stdout.splitlines()
    with open(log, "a") as out:
        out.write(finished.stdout)
    if finished.returncode != 0 or not out_lines or not out_lines[-1].startswith("LADDER "):
        raise SystemExit(f"ladder: `{subcommand}` failed (exit {finished.returncode}); see {log}")
    return json.loads(out_lines[-1][len("LADDER "):]), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a timit_11 folder whose test split has labels")
    parser.add_argument("--out", default="ladder_runs", help="one folder per rung under it")
    parser.add_argument("--rungs", nargs="+", default=list(RUNGS), choices=[*FITTED, "ensemble"])
    parser.add_argument("--gpu", action="store_true", help="layer each rung's GPU config (gpu.yaml, gpu_recurrent.yaml)")
    parser.add_argument("--fit-args", default="", help="extra arguments for every fit, one string")
    options = parser.parse_args()
    if "ensemble" in options.rungs and not set(ENSEMBLE_MEMBERS) <= set(options.rungs):
        parser.error(f"the ensemble rung needs the {', '.join(ENSEMBLE_MEMBERS)} rungs in the same run")
    data = ["--data.data_dir", str(Path(options.data).resolve())]
    out = Path(options.out).resolve()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()})"
    quiet = ["--trainer.enable_progress_bar", "false"]

    rows, best = [], {}

    def rung(name: str, config: str, decoder: str, *layered: str) -> None:
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        configs = ["--config", str(CONFIGS / config)] + [a for c in layered for a in ("--config", str(CONFIGS / c))]
        if options.gpu and config in GPU_CONFIGS:
            configs += ["--config", str(CONFIGS / GPU_CONFIGS[config])]
        config = " + ".join((config, *layered))
        fit, fit_s = run(folder / "fit.log", "fit", *configs, *data, *quiet, *shlex.split(options.fit_args))
        best[name] = fit["best_path"]
        ckpt = ["--ckpt_path", fit["best_path"]]
        test, test_s = run(folder / "test.log", "test", *configs, *data, *quiet, *ckpt)
        rows.append(dict(rung=config, epochs=fit["epochs"], val_acc=fit["best_val_acc"], test_acc=test["test/acc"],
                         test_per=test.get("test/per"), fit_s=fit_s, test_s=test_s, checkpoint=fit["best_path"]))
        if decoder:
            decoded, decoded_s = run(folder / "test_decoded.log", "test", *configs, "--config", str(CONFIGS / decoder),
                                     *data, *quiet, *ckpt)
            rows.append(dict(rung=f"{config} + {decoder}", test_acc=decoded["test/acc_viterbi"],
                             test_per=decoded.get("test/per_viterbi"), test_s=decoded_s))

    for name, (config, decoder, *layered) in FITTED.items():
        if name in options.rungs:
            rung(name, config, decoder, *layered)
    if "ensemble" in options.rungs:
        folder = out / "ensemble"
        folder.mkdir(parents=True, exist_ok=True)
        members = ["--model.checkpoints", f"[{', '.join(best[m] for m in ENSEMBLE_MEMBERS)}]", "--data.eval_batch_size", "64"]
        ensemble = ["--config", str(CONFIGS / "ensemble.yaml"), *data, *quiet, *members]
        test, test_s = run(folder / "test.log", "test", *ensemble)
        rows.append(dict(rung=f"ensemble.yaml [{', '.join(ENSEMBLE_MEMBERS)}]", test_acc=test["test/acc"],
                         test_per=test.get("test/per"), test_s=test_s))
        decoded, decoded_s = run(folder / "test_decoded.log", "test", *ensemble, "--config",
                                 str(CONFIGS / "viterbi_recurrent.yaml"))
        rows.append(dict(rung="ensemble.yaml + viterbi_recurrent.yaml", test_acc=decoded["test/acc_viterbi"],
                         test_per=decoded.get("test/per_viterbi"), test_s=decoded_s))

    print(f"\n{device}, torch {torch.__version__}\n")
    print("| rung | epochs | best val/acc | test/acc | test/per | fit wall | test wall |\n|---|---|---|---|---|---|---|")
    for row in rows:
        fit_wall = f"{row['fit_s'] / 60:.1f} min" if "fit_s" in row else ""
        val = f"{row['val_acc']:.4f}" if row.get("val_acc") is not None else ""
        per = f"{row['test_per']:.4f}" if row.get("test_per") is not None else ""
        print(f"| {row['rung']} | {row.get('epochs', '')} | {val} | {row['test_acc']:.4f} | {per} | {fit_wall} | "
              f"{row['test_s']:.0f} s |")
    (out / "ladder.json").write_text(json.dumps(dict(device=device, torch=torch.__version__, rows=rows), indent=1))


if __name__ == "__main__":
    main()

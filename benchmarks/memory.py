"""Peak memory and start-up of whole ``python -m timit_lit`` processes: a short ``fit`` and a
``predict`` with its last checkpoint, run as the user runs them (figures in docs/speed.md).

    python benchmarks/memory.py --data-dir ../data/replica [--config configs/recurrent.yaml] [--batches 20]

``predict`` runs as the fit's closing lines suggest: the same ``--config`` and data folder,
the fit's ``last.ckpt`` (or ``--checkpoint``, which skips the fit). Options this script does
not know go to ``fit`` (e.g. ``--model.label_smoothing 0``). For each
process it prints its peak resident memory (the kernel's ``ru_maxrss`` of that child alone,
mapped file pages included, as ``/usr/bin/time -v`` reports it), its wall time, and the
seconds until its first batch was done (read from the progress bar: start-up, i.e. imports,
data checks and set-up, plus one batch). The processes run in this working folder, so they
import the ``timit_lit`` found here. Linux only (``os.wait4``; ``ru_maxrss`` in KiB).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

# The progress bar's line once the first batch of the fit's first epoch / of predict is done.
FIRST_BATCH = re.compile(rb"(Epoch 0|Predicting DataLoader 0):\s+\d+%\|[^|]*\|\s*1/")


def measure(command: list[str], log: Path) -> dict:
    """Run ``command`` to its end, its output into ``log``: peak RSS (bytes), wall and
    first-batch seconds (None if no progress bar showed one)."""
    start = time.perf_counter()
    first_batch, tail = None, b""
    with open(log, "wb", buffering=0) as out:  # unbuffered: the log can be watched
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        while chunk := os.read(process.stdout.fileno(), 1 << 16):
            out.write(chunk)
            tail = tail[-256:] + chunk  # a match may straddle two reads
            if first_batch is None and FIRST_BATCH.search(tail):
                first_batch = time.perf_counter() - start
        _, status, usage = os.wait4(process.pid, 0)  # this child's own resource usage
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        process.stdout.close()
    if process.returncode != 0:
        sys.exit(f"{' '.join(command)}: exit status {process.returncode}; its output: {log}")
    return {"peak_rss": usage.ru_maxrss * 1024, "wall": wall, "first_batch": first_batch}


def show(name: str, figures: dict) -> str:
    first: Optional[float] = figures["first_batch"]
    first_text = f"{first:6.1f} s" if first is not None else "     n/a"
    return f"{name:8s} {figures['peak_rss'] / 2**30:6.2f} GiB  {figures['wall']:7.1f} s  {first_text}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="a timit_11 folder (train_11.npy, test_11.npy, ...)")
    parser.add_argument("--config", default="configs/recurrent.yaml", help="the fit's config")
    parser.add_argument("--batches", type=int, default=20, help="training batches of the short fit (one epoch)")
    parser.add_argument("--checkpoint", help="measure predict with this checkpoint only (no fit)")
    parser.add_argument("--keep", help="a folder for the runs and logs (default: a temporary one, removed)")
    args, fit_options = parser.parse_known_args(argv)
    with tempfile.TemporaryDirectory(prefix="timit_memory_") as scratch:
        work = Path(args.keep or scratch)
        work.mkdir(parents=True, exist_ok=True)
        cli = [sys.executable, "-m", "timit_lit"]
        fit = [*cli, "fit", "--config", args.config, "--data.data_dir", args.data_dir,
               "--trainer.limit_train_batches", str(args.batches), "--trainer.max_epochs", "1",
               "--trainer.default_root_dir", str(work / "fit"), *fit_options]
        results, checkpoint = {}, args.checkpoint
        if checkpoint is None:
            results["fit"] = measure(fit, work / "fit.log")
            (checkpoint,) = (work / "fit").glob("**/checkpoints/last.ckpt")
        predict = [*cli, "predict", "--config", args.config, "--data.data_dir", args.data_dir,
                   "--ckpt_path", str(checkpoint), "--prediction.output_path", str(work / "prediction.csv")]
        results["predict"] = measure(predict, work / "predict.log")
    print(f"{'process':8s} {'peak RSS':>10s}  {'wall':>9s}  {'first batch done':>8s}")
    for name, figures in results.items():
        print(show(name, figures))
    for name in results:
        print(f"{name + ':':8s} {' '.join((fit if name == 'fit' else predict)[1:])}")


if __name__ == "__main__":
    main()

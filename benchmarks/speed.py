"""Speed and memory of timit_lit's `fit` against the course notebook's loop and a plain loop.

    python benchmarks/speed.py                       # speed, on this machine's CPU
    python benchmarks/speed.py --device cuda         # speed, on the GPU
    python benchmarks/speed.py --memory              # also peak memory on course-sized files

Speed: steady-state training rows/s of the notebook's MLP (429-1024-512-128-39, sigmoid,
Adam 1e-4) on generated course-shaped rows, measured three ways:
- `notebook`: the course's loop, reproduced: its TIMITDataset (a float copy of all rows),
  DataLoader(batch_size, shuffle=True), and per-batch `.cpu()` / `.item()` accuracy and loss;
- `plain`: the same model, loss and Adam over in-memory tensors on the device with shuffled
  index batches, nothing else: the limit for this model on this machine;
- `timit_lit`: `fit` through the CLI's classes (TimitDataModule, PhoneClassifier, Trainer),
  timed per epoch by a callback, epochs after the first, no validation; `default` is
  the config as shipped (`model.steps_per_call: auto`), and `--variant` adds others.
Memory: peak resident memory (and proportional set size, which counts shared pages once)
of `python -m timit_lit fit` (1 epoch) and `predict` on 1,229,932 x 429 and 451,552 x 429
files, float32 and float64, and of a 2-process DDP fit.

Figures go to stdout as a table, and with --json to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from timit_lit.cli import TimitCLI
from timit_lit.data import TimitDataModule
from timit_lit.models import PhoneModel
from timit_lit.models.mlp import mlp
from timit_lit.runtime import quiet_known_warnings

COURSE_TRAIN_ROWS, COURSE_TEST_ROWS, WIDTH, CLASSES = 1_229_932, 451_552, 429, 39


def write_course_shaped(out: Path, train_rows: int, test_rows: int, dtype: str, seed: int = 0) -> Path:
    """Random features and labels in the timit_11 layout, written in chunks (no full copy)."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, rows in (("train_11.npy", train_rows), ("test_11.npy", test_rows)):
        array = np.lib.format.open_memmap(out / name, mode="w+", dtype=dtype, shape=(rows, WIDTH))
        for start in range(0, rows, 100_000):
            stop = min(start + 100_000, rows)
            array[start:stop] = rng.standard_normal((stop - start, WIDTH), dtype=np.float32)
        array.flush()
        del array
    labels = rng.integers(0, CLASSES, train_rows)
    np.save(out / "train_label_11.npy", labels.astype(str))  # strings, as the course's
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- the course notebook, as published (np.int replaced by np.int64) ----------------------
class TIMITDataset(Dataset):
    def __init__(self, X, y=None):
        self.data = torch.from_numpy(X).float()
        if y is not None:
            y = y.astype(np.int64)
            self.label = torch.LongTensor(y)
        else:
            self.label = None

    def __getitem__(self, idx):
        if self.label is not None:
            return self.data[idx], self.label[idx]
        return self.data[idx]

    def __len__(self):
        return len(self.data)


def notebook_loop(x: np.ndarray, y: np.ndarray, device, batch_size: int, warmup: int, steps: int) -> float:
    """Rows/s of the notebook's training loop over ``steps`` batches after ``warmup``."""
    torch.manual_seed(0)
    model = mlp(WIDTH, (1024, 512, 128), CLASSES, "sigmoid").to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loader = DataLoader(TIMITDataset(x, y), batch_size=batch_size, shuffle=True)
    train_acc = train_loss = 0.0
    model.train()
    for i, (inputs, labels) in enumerate(loader):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
        if i == warmup + steps:
            break
        inputs, labels = inputs.to(device), labels.to(device)
        optimizer.zero_grad()
        outputs = model(inputs)
        batch_loss = criterion(outputs, labels)
        _, train_pred = torch.max(outputs, 1)
        batch_loss.backward()
        optimizer.step()
        train_acc += (train_pred.cpu() == labels.cpu()).sum().item()
        train_loss += batch_loss.item()
    _sync(device)
    return steps * batch_size / (time.perf_counter() - start)


def plain_loop(x: np.ndarray, y: np.ndarray, device, batch_size: int, warmup: int, steps: int) -> float:
    """Rows/s of the bare minimum: in-memory tensors, shuffled index batches, forward, backward, Adam."""
    torch.manual_seed(0)
    model = mlp(WIDTH, (1024, 512, 128), CLASSES, "sigmoid").to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    features = torch.from_numpy(x).to(device)
    labels = torch.from_numpy(y).to(device)
    order = torch.randperm(len(features), device=device)
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
        rows = order[(i * batch_size) % (len(order) - batch_size) :][:batch_size]
        loss = nn.functional.cross_entropy(model(features[rows]), labels[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    _sync(device)
    return steps * batch_size / (time.perf_counter() - start)


class EpochTimer(pl.Callback):
    """Wall time and rows of each training epoch (synchronised with the device at its edges only).
    No per-batch hook: a callback with one would make ``steps_per_call: auto`` fall back."""

    def __init__(self):
        self.epochs: list[tuple[float, int]] = []

    def on_train_epoch_start(self, trainer, pl_module):
        _sync(pl_module.device)
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        _sync(pl_module.device)
        self.epochs.append((time.perf_counter() - self._start, len(trainer.train_dataloader.dataset)))


def timit_lit_fit(x: np.ndarray, y: np.ndarray, device, batch_size: int, steps: int, epochs: int, options: list[str]) -> float:
    """Rows/s of `fit` (epochs after the first) on the first ``steps`` batches of rows, all of
    them training (no validation split): whole epochs, so that no Lightning batch limit is set,
    which would make ``steps_per_call: auto`` fall back."""
    timer = EpochTimer()
    with tempfile.TemporaryDirectory() as logs:
        data_dir = Path(logs) / "data"
        data_dir.mkdir()
        np.save(data_dir / "train_11.npy", x[: steps * batch_size])
        np.save(data_dir / "train_label_11.npy", y[: steps * batch_size])
        cli = TimitCLI(
            PhoneModel,
            TimitDataModule,
            subclass_mode_model=True,
            run=False,
            seed_everything_default=0,
            args=[
                "--config", str(Path(__file__).parents[1] / "configs" / "baseline.yaml"),
                "--data.data_dir", str(data_dir),
                "--data.batch_size", str(batch_size),
                "--data.val_ratio", "0",
                "--trainer.max_epochs", str(epochs),
                "--trainer.accelerator", device.type,
                "--trainer.devices", "1",
                "--trainer.enable_progress_bar", "false",
                "--trainer.enable_model_summary", "false",
                "--trainer.logger", "false",
                "--trainer.default_root_dir", logs,
                *options,
            ],
        )
        cli.trainer.callbacks.append(timer)
        cli.trainer.fit(cli.model, cli.datamodule)
    seconds = sum(t for t, _ in timer.epochs[1:])
    return sum(rows for _, rows in timer.epochs[1:]) / seconds


def speed(args, device: torch.device) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = write_course_shaped(Path(tmp), args.rows, 1000, "float32")
        x = np.load(data / "train_11.npy")
        y = np.load(data / "train_label_11.npy").astype(np.int64)
        for batch_size in args.batch_sizes:
            steps = max(20, args.rows_per_timing // batch_size)
            warmup = max(5, steps // 10)
            row = {"device": device.type, "batch_size": batch_size, "steps": steps}
            row["notebook"] = notebook_loop(x, y, device, batch_size, warmup, steps)
            row["plain"] = plain_loop(x, y, device, batch_size, warmup, steps)
            for name, options in args.variants:
                row[f"timit_lit {name}"] = timit_lit_fit(x, y, device, batch_size, steps, args.epochs, options)
            results.append(row)
            _print_speed(row)
    return results


def _print_speed(row: dict) -> None:
    print(f"\n{row['device']}, batch {row['batch_size']}, {row['steps']} steps per timing (rows/s; ratio to plain, to notebook)")
    for name, value in row.items():
        if name in ("device", "batch_size", "steps"):
            continue
        print(f"  {name:38s} {value:12,.0f}   {value / row['plain']:5.2f}x plain   {value / row['notebook']:5.2f}x notebook")
    sys.stdout.flush()


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return pids


def _rss_pss(pids: list[int]) -> tuple[int, int]:
    rss = pss = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
        except OSError:
            pass
    return rss, pss


def peak_memory(command: list[str], cwd: Path) -> dict:
    """Run ``command``; sample the resident (RSS) and proportional (PSS) memory of its whole
    process tree every 0.2 s. Returns the peaks and the wall time."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak_rss = peak_pss = 0
    while process.poll() is None:
        rss, pss = _rss_pss(_tree(process.pid))
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(0.2)
    stderr = process.stderr.read()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{stderr[-2000:]}")
    return {"seconds": time.perf_counter() - start, "peak_rss_tree": peak_rss, "peak_pss_tree": peak_pss}


def memory(args) -> list[dict]:
    results = []
    config = str(Path(__file__).parents[1] / "configs" / "baseline.yaml")
    common = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for dtype in ("float32", "float64"):
            data = write_course_shaped(Path(tmp) / dtype, COURSE_TRAIN_ROWS, COURSE_TEST_ROWS, dtype)
            fit = [sys.executable, "-m", "timit_lit", "fit", "--config", config, "--data.data_dir", str(data),
                   "--trainer.max_epochs", "1", "--data.batch_size", "2048", *common]
            runs = [("fit, 1 epoch", fit)]
            if dtype == "float64":
                runs.append(("fit, 1 epoch, DDP 2 processes", [*fit, "--trainer.devices", "2", "--trainer.strategy", "ddp",
                                                               "--trainer.accelerator", "cpu"]))
            for name, command in runs:
                results.append({"run": name, "dtype": dtype, **peak_memory(command, Path(tmp))})
                _print_memory(results[-1])
            (checkpoint,) = (Path(tmp) / "lightning_logs").glob("version_0/checkpoints/last.ckpt")
            predict = [sys.executable, "-m", "timit_lit", "predict", "--config", config, "--data.data_dir", str(data),
                       "--ckpt_path", str(checkpoint), "--prediction.output_path", str(Path(tmp) / "p.csv"), *common]
            results.append({"run": "predict", "dtype": dtype, **peak_memory(predict, Path(tmp))})
            _print_memory(results[-1])
            subprocess.run(["rm", "-rf", str(Path(tmp) / "lightning_logs"), str(data)], check=True)
    return results


def _print_memory(row: dict) -> None:
    gb = 1024**3
    print(f"  {row['run']:32s} {row['dtype']:8s} peak RSS {row['peak_rss_tree'] / gb:5.2f} GiB   "
          f"peak PSS {row['peak_pss_tree'] / gb:5.2f} GiB   {row['seconds']:6.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 2048])
    parser.add_argument("--rows", type=int, default=200_000, help="training rows generated for the speed runs")
    parser.add_argument("--rows-per-timing", type=int, default=100_000, help="rows trained per timed epoch")
    parser.add_argument("--epochs", type=int, default=3, help="timit_lit epochs (the first is not timed)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=OPTIONS",
                        help="a timit_lit run with extra CLI options, e.g. 'k32=--model.steps_per_call 32'")
    parser.add_argument("--memory", action="store_true", help="also measure peak memory on course-sized files")
    parser.add_argument("--memory-only", action="store_true")
    parser.add_argument("--tmp", default=None, help="folder for the course-sized files (needs ~12 GB)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    quiet_known_warnings()
    args.variants = [("default", [])] + [(v.split("=", 1)[0], v.split("=", 1)[1].split()) for v in args.variant]
    device = torch.device(args.device)
    print(f"{platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"pytorch_lightning {pl.__version__}" + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""))
    report = {"speed": [] if args.memory_only else speed(args, device)}
    if args.memory or args.memory_only:
        print("\nPeak memory (whole process tree)")
        report["memory"] = memory(args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

"""DDP on CPU, as real separate processes (`python -m timit_lit ... --trainer.strategy ddp`)."""

import json
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from timit_lit.data.utterances import utterance_starts

from helpers import BASELINE, QUIET, REPO, run_in
from helpers.utterance_log import utterance_key

DDP2 = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]


def timit_lit(cwd, *args):
    # The tests folder on the path: helper callbacks (helpers/utterance_log.py) load by class path.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)])}
    result = subprocess.run([sys.executable, "-m", "timit_lit", *args, *QUIET], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_predict_on_two_processes_writes_the_same_bytes(tiny_data, best_checkpoint, tmp_path):
    n_rows = len(np.load(tiny_data / "test_11.npy", mmap_mode="r"))
    assert n_rows % 2 == 1  # an odd count: one process gets one row more, none is padded in
    common = ["--config", BASELINE, "--data.data_dir", str(tiny_data), "--ckpt_path", str(best_checkpoint),
              "--data.eval_batch_size", "100"]
    run_in(tmp_path, "predict", *common, "--prediction.output_path", str(tmp_path / "one.csv"),
           "--prediction.posteriors_path", str(tmp_path / "one.npy"))
    timit_lit(tmp_path, "predict", *common, *DDP2, "--prediction.output_path", str(tmp_path / "two.csv"),
              "--prediction.posteriors_path", str(tmp_path / "two.npy"))
    one, two = (tmp_path / "one.csv").read_bytes(), (tmp_path / "two.csv").read_bytes()
    assert two.count(b"\n") == n_rows + 1
    assert one == two
    # The posteriors too are gathered by row id: the same array, row for row. Equal to float
    # rounding only: each process's batches hold other rows, and a CPU's matrix kernels may round a
    # row differently with the batch around it (seen on CI's CPU, not on every one).
    posteriors = np.load(tmp_path / "two.npy")
    assert posteriors.shape == (n_rows, 39)
    np.testing.assert_allclose(posteriors, np.load(tmp_path / "one.npy"), rtol=1e-5, atol=1e-8)


def test_fit_on_two_processes(tiny_data, tmp_path):
    result = timit_lit(tmp_path, "fit", "--config", BASELINE, "--data.data_dir", str(tiny_data), *DDP2,
                       "--trainer.max_epochs", "1", "--data.batch_size", "128")
    checkpoints = sorted(p.name for p in (tmp_path / "lightning_logs/version_0/checkpoints").iterdir())
    assert len(checkpoints) == 2 and checkpoints[0].startswith("epoch=00-val_acc=")
    assert not (tmp_path / "lightning_logs/version_1").exists(), "rank 1 must not start a run folder of its own"
    # Rank 0 alone draws the figures, from the confusion counts of both processes.
    events = EventAccumulator(str(tmp_path / "lightning_logs/version_0"), size_guidance={"images": 0}).Reload()
    assert [len(events.Images(tag)) for tag in ("val/confusion", "val/phone_acc", "val/segments")] == [1, 1, 1]
    assert len(events.Scalars("hp/best_val_acc")) == 1
    # No phone error rate from processes that each see a share of the rows: said, not logged.
    assert "phone_errors: the phone error rate and boundary accuracies need one process" in result.stderr
    assert not any(tag.startswith(("val/per", "val/acc_")) for tag in events.Tags()["scalars"])


@pytest.mark.slow  # the MLP's DDP fit and predict and the bucketed order's agreement stay in the default suite
def test_recurrent_fit_and_predict_on_two_processes(tiny_data, tmp_path):
    """Utterance batches under DDP: each process takes whole utterances; the CSV is that of one process."""
    recurrent = ["--config", str(REPO / "configs" / "recurrent.yaml"), "--data.data_dir", str(tiny_data),
                 "--model.hidden_size", "16", "--model.num_layers", "1", "--data.batch_size", "4",
                 "--data.eval_batch_size", "3"]
    # Length-bucketed batches: Lightning deals the order out to the two processes.
    timit_lit(tmp_path, "fit", *recurrent, *DDP2, "--trainer.max_epochs", "1", "--data.bucket_by_length", "true")
    (best,) = (tmp_path / "lightning_logs/version_0/checkpoints").glob("epoch=*.ckpt")
    run_in(tmp_path, "predict", *recurrent, "--ckpt_path", str(best), "--prediction.output_path", str(tmp_path / "one.csv"))
    timit_lit(tmp_path, "predict", *recurrent, *DDP2, "--ckpt_path", str(best),
              "--prediction.output_path", str(tmp_path / "two.csv"))
    n_rows = len(np.load(tiny_data / "test_11.npy", mmap_mode="r"))
    one, two = (tmp_path / "one.csv").read_bytes(), (tmp_path / "two.csv").read_bytes()
    assert two.count(b"\n") == n_rows + 1 and one == two


def test_every_epoch_the_processes_share_the_bucketed_order_exactly(tiny_data, tmp_path):
    """Length-bucketed batches, 2 processes, 3 epochs, with dropout and input masks drawing from
    each process's generator a number of values that depends on its own batches: every epoch the
    two processes together train each utterance once (plus DistributedSampler's padding to an
    even count), and each epoch's order is new."""
    timit_lit(tmp_path, "fit", "--config", str(REPO / "configs" / "recurrent.yaml"), "--data.data_dir", str(tiny_data),
              "--model.hidden_size", "8", "--model.num_layers", "1", "--data.batch_size", "2", *DDP2,
              "--trainer.max_epochs", "3", "--trainer.callbacks+=helpers.utterance_log.UtteranceLog",
              "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false")
    ranks = [json.loads((tmp_path / f"utterances_rank{r}.json").read_text()) for r in (0, 1)]
    features = np.load(tiny_data / "train_11.npy")
    starts = utterance_starts(features)
    centre = slice(5 * 39, 6 * 39)  # context 1: each step's input is its row's centre frame
    every = Counter(utterance_key(features[a, centre], b - a) for a, b in zip(starts[:-1], starts[1:]))
    assert len(every) == len(starts) - 1 == 12  # keys tell the utterances apart
    assert [len(epochs) for epochs in ranks] == [3, 3]
    for epoch in range(3):
        trained = Counter(ranks[0][epoch]) + Counter(ranks[1][epoch])
        assert trained.keys() == every.keys(), f"epoch {epoch}: utterances missed"
        padded = -(-len(every) // 4) * 4  # whole rounds of 2 batches of 2, one per process
        assert sum(trained.values()) == padded, f"epoch {epoch}: utterances repeated"
        assert len(ranks[0][epoch]) == len(ranks[1][epoch])
    assert ranks[0][0] != ranks[0][1] != ranks[0][2]  # a new order every epoch


def test_a_run_leaves_the_process_group_it_joined(tiny_data, best_checkpoint, tmp_path, monkeypatch):
    """A DDP run's gloo group is destroyed when the run ends, so the interpreter's shutdown never
    meets it (left there, it can abort a process whose work is done); a group the caller made stays."""
    import socket

    import torch.distributed as dist

    with socket.socket() as free:  # a port no other process holds (a fixed one may be taken on a shared host)
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    # Set through monkeypatch so that they are restored: Lightning writes them into os.environ.
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    common = ["--config", BASELINE, "--data.data_dir", str(tiny_data), "--ckpt_path", str(best_checkpoint),
              "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "ddp"]
    run_in(tmp_path, "predict", *common, "--prediction.output_path", str(tmp_path / "joined.csv"))
    assert (tmp_path / "joined.csv").exists() and not dist.is_initialized()
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        run_in(tmp_path, "predict", *common, "--prediction.output_path", str(tmp_path / "given.csv"))
        assert (tmp_path / "given.csv").exists() and dist.is_initialized()
    finally:
        dist.destroy_process_group()

"""Real speech: the replica of timit_11 built from TIMIT in ../shared (skipped where it is absent)."""

import subprocess
import sys

import numpy as np
import pytest

from helpers import BASELINE, SHARED, run_in

TOOL = SHARED / "tools" / "timit_replica.py"
pytestmark = pytest.mark.skipif(not TOOL.is_file(), reason="../shared/tools/timit_replica.py is not here")


@pytest.fixture(scope="module")
def replica_subset(tmp_path_factory):
    out = tmp_path_factory.mktemp("replica")
    subprocess.run([sys.executable, str(TOOL), str(out), "--utterances", "150", "--test-utterances", "40"],
                   check=True, capture_output=True)
    return out


def test_the_replica_loads_as_course_data(replica_subset, tmp_path):
    labels = np.load(replica_subset / "train_label_11.npy")
    assert labels.dtype.kind == "U"  # string labels, as in the course files
    cli = run_in(tmp_path, "fit", "--config", BASELINE, "--data.data_dir", str(replica_subset),
                 "--trainer.fast_dev_run", "true")
    assert cli.datamodule.input_dim == 429 and cli.model.hparams.num_classes == 39


def test_baseline_network_learns_real_phones(replica_subset, tmp_path):
    """Two quick epochs (batch 256, lr 2e-3) of the notebook's network on 150 utterances."""
    run_in(tmp_path, "fit", "--config", BASELINE, "--data.data_dir", str(replica_subset), "--data.batch_size", "256",
           "--model.lr", "0.002", "--trainer.max_epochs", "2")
    (best,) = (tmp_path / "lightning_logs/version_0/checkpoints").glob("epoch=*.ckpt")
    cli = run_in(tmp_path, "test", "--config", BASELINE, "--data.data_dir", str(replica_subset), "--ckpt_path", str(best))
    # Silence, the commonest class, is 15% of the frames. Two short epochs reach well above that.
    assert float(cli.trainer.callback_metrics["test/acc"]) > 0.35

"""What `predict` can write besides the Kaggle CSV: phone symbols, posteriors, the MLE-bench header."""

import importlib.util

import numpy as np
import pytest
import torch

from timit_lit.models import PhoneClassifier
from timit_lit.phones import PHONES

from helpers import BASELINE, SHARED, run_in


def test_phone_names_are_the_course_order():
    assert len(PHONES) == len(set(PHONES)) == 39
    assert PHONES[:3] == ("iy", "ih", "eh") and PHONES[-1] == "sil"
    replica = SHARED / "tools" / "timit_replica.py"
    if replica.is_file():  # the replica's labels use the same ids
        spec = importlib.util.spec_from_file_location("timit_replica", replica)
        tool = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(tool)
        assert PHONES == tuple(tool.PHONES39)


@pytest.fixture(scope="module")
def predictions(tiny_data, best_checkpoint, tmp_path_factory):
    """Three predict runs of one checkpoint: default, MLE-bench + float32 posteriors, phones + float16."""
    out = tmp_path_factory.mktemp("outputs")
    common = ["--config", BASELINE, "--data.data_dir", str(tiny_data), "--ckpt_path", str(best_checkpoint)]
    run_in(out, "predict", *common, "--prediction.output_path", "kaggle.csv")
    run_in(out, "predict", *common, "--prediction.output_path", "mle.csv", "--prediction.format", "mle-bench",
           "--prediction.posteriors_path", "post/p32.npy")
    run_in(out, "predict", *common, "--prediction.output_path", "phones.csv", "--prediction.with_phone", "true",
           "--prediction.posteriors_path", "p16.npy", "--prediction.posteriors_dtype", "float16")
    return out


def expected_posteriors(tiny_data, best_checkpoint):
    model = PhoneClassifier.load_from_checkpoint(best_checkpoint, map_location="cpu")
    with torch.no_grad():
        return model(torch.from_numpy(np.load(tiny_data / "test_11.npy"))).softmax(1).numpy()


def test_both_submission_headers(predictions):
    kaggle, mle = (predictions / "kaggle.csv").read_bytes(), (predictions / "mle.csv").read_bytes()
    assert kaggle.startswith(b"Id,Class\n0,") and mle.startswith(b"Id,ClassId\n0,")
    assert mle == kaggle.replace(b"Id,Class\n", b"Id,ClassId\n", 1)  # only the header differs


def test_phone_column(predictions):
    kaggle = (predictions / "kaggle.csv").read_text().splitlines()
    phones = (predictions / "phones.csv").read_text().splitlines()
    assert phones[0] == "Id,Class,Phone" and len(phones) == len(kaggle)
    for with_phone, plain in zip(phones[1:], kaggle[1:]):
        row, cls = plain.split(",")
        assert with_phone == f"{row},{cls},{PHONES[int(cls)]}"


def test_posteriors_in_file_order(predictions, tiny_data, best_checkpoint):
    p32, p16 = np.load(predictions / "post" / "p32.npy"), np.load(predictions / "p16.npy")
    expected = expected_posteriors(tiny_data, best_checkpoint)
    assert p32.dtype == np.float32 and p16.dtype == np.float16 and p32.shape == p16.shape == expected.shape
    np.testing.assert_allclose(p32, expected, atol=1e-6)
    np.testing.assert_allclose(p32.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(p16, p32, atol=1e-3)
    classes = np.loadtxt(predictions / "kaggle.csv", delimiter=",", skiprows=1, dtype=np.int64)[:, 1]
    assert np.array_equal(p32.argmax(1), classes)
    assert not list(predictions.glob("**/.*tmp*")), "no temporary file is left behind"

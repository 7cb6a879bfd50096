"""Damaged files, in many seeded ways: each loads, or fails with one InputError naming the file.

Damage that must be noticed (truncation, a header whose shape or dtype no longer fits the
data, a tail; any changed byte of a checkpoint, whose zip members carry CRCs) must fail;
a changed byte inside a ``.npy`` file's data may go unnoticed (the format has no
checksum), but must never give anything worse than a clean error.
"""

import io
import os
import random
import signal
import zipfile
from contextlib import contextmanager

import numpy as np
import pytest

from timit_lit.checkpoints import read_checkpoint
from timit_lit.data.files import TRAIN_FEATURES, TRAIN_LABELS, float32_features, load_labels
from timit_lit.errors import InputError

from helpers import BASELINE, copy_data, fails_with

CASES_PER_FILE = int(os.environ.get("TIMIT_FUZZ_CASES", 40))  # more for a longer search


def npy_parts(raw: bytes):
    """(header dict, data bytes) of a version 1.0 ``.npy`` file."""
    header_len = int.from_bytes(raw[8:10], "little")
    header = eval(raw[10 : 10 + header_len].decode("latin1"))  # a dict literal numpy wrote
    return header, raw[10 + header_len :]


def npy_with_header(header: dict, data: bytes) -> bytes:
    text = repr(header)
    text += " " * (63 - (10 + len(text)) % 64) + "\n"  # numpy's padding to 64 bytes
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin1") + data


def member_spans(raw: bytes) -> dict[str, range]:
    """Where each member's data lies in a zip archive (a checkpoint)."""
    spans = {}
    for info in zipfile.ZipFile(io.BytesIO(raw)).infolist():
        at = info.header_offset
        start = at + 30 + int.from_bytes(raw[at + 26 : at + 28], "little") + int.from_bytes(raw[at + 28 : at + 30], "little")
        spans[info.filename] = range(start, start + info.compress_size)
    return spans


def with_garbage_member(raw: bytes, rng: random.Random) -> tuple[bytes, bool]:
    """The archive rewritten (valid CRCs) with one member's bytes replaced by random ones, and
    whether that must fail: the pickle, or a tensor's data of another length."""
    archive = zipfile.ZipFile(io.BytesIO(raw))
    victim = rng.choice(archive.infolist())
    length = rng.choice([victim.file_size, rng.randrange(2 * victim.file_size + 2)])
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as rewritten:
        for info in archive.infolist():
            garbage = rng.randbytes(length) if info is victim else archive.read(info)
            rewritten.writestr(info.filename, garbage)
    name = victim.filename
    return out.getvalue(), name.endswith("data.pkl") or ("/data/" in name and length != victim.file_size)


def damaged(raw: bytes, rng: random.Random, npy: bool) -> tuple[str, bytes, bool]:
    """(what was done, the damaged bytes, whether it must be noticed)."""
    kinds = ["truncated", "random tail", "flipped header bits", "flipped bits"]
    if npy:
        kinds += ["more rows in header", "fewer rows in header", "wider dtype in header", "object dtype in header"]
    else:
        kinds += ["flipped bits in a member", "garbage member"]
    kind = rng.choice(kinds)
    data = bytearray(raw)
    if kind == "truncated":
        return kind, bytes(data[: rng.randrange(len(data))]), True
    if kind == "random tail":
        return kind, bytes(data) + rng.randbytes(rng.randint(1, 64)), npy  # a zip archive with a tail reads whole
    if kind == "garbage member":
        return kind, *with_garbage_member(raw, rng)
    if kind.startswith("flipped"):
        # Anywhere; in the header (npy) or the first members (checkpoint); or in a member's data, which its CRC covers.
        span = {"flipped bits": range(len(data)), "flipped header bits": range(128 if npy else 4096)}.get(kind)
        if span is None:
            span = rng.choice([s for s in member_spans(raw).values() if len(s)])
        for _ in range(rng.randint(1, 6)):
            data[rng.choice(span)] ^= 1 << rng.randrange(8)
        return kind, bytes(data), kind == "flipped bits in a member"
    header, body = npy_parts(raw)
    rows, *rest = header["shape"]
    if kind == "more rows in header":
        header["shape"] = (rows + rng.randint(1, 1000), *rest)
    elif kind == "fewer rows in header":
        header["shape"] = (rng.randrange(rows), *rest)
    elif kind == "wider dtype in header":
        header["descr"] = rng.choice(["<f8", "<U8", "<i8"])
    else:
        header["descr"] = "|O"
    return kind, npy_with_header(header, body), True


@contextmanager
def no_hang(seconds: int):
    def stop(*_):
        raise TimeoutError(f"no answer in {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def outcome(load, path, kind, seed, must_fail):
    """Load ``path``; fail the test for anything but success or one clear InputError."""
    try:
        with no_hang(60):
            load(path)
    except InputError as error:
        assert path.name in str(error), f"seed {seed} ({kind}): the message does not name the file: {error}"
        return str(error)
    except BaseException as error:
        pytest.fail(f"seed {seed} ({kind}): {type(error).__name__}: {error}")
    assert not must_fail, f"seed {seed} ({kind}): the damage went unnoticed"
    return None


def loaders(tiny_data, best_checkpoint, tmp_path):
    """name: (file to damage, load function)."""
    n_rows = len(np.load(tiny_data / TRAIN_FEATURES, mmap_mode="r"))
    return {
        "features": (tiny_data / TRAIN_FEATURES, lambda p: float32_features(p, tmp_path / "cache")),
        "labels": (tiny_data / TRAIN_LABELS, lambda p: load_labels(p, n_rows, 39, tiny_data / TRAIN_FEATURES)),
        "checkpoint": (best_checkpoint, read_checkpoint),
    }


@pytest.mark.parametrize("name", ["features", "labels", "checkpoint"])
def test_damaged_files_fail_cleanly(name, tiny_data, best_checkpoint, tmp_path):
    source, load = loaders(tiny_data, best_checkpoint, tmp_path)[name]
    raw, failures = source.read_bytes(), 0
    for seed in range(CASES_PER_FILE):
        rng = random.Random(f"{name}-{seed}")
        kind, data, must_fail = damaged(raw, rng, npy=source.suffix == ".npy")
        path = tmp_path / f"damaged-{seed}{source.suffix}"
        path.write_bytes(data)
        failures += outcome(load, path, kind, seed, must_fail) is not None
        path.unlink()
    assert failures >= CASES_PER_FILE // 2  # most damage is noticed


@pytest.mark.parametrize("name", ["features", "labels", "checkpoint"])
def test_a_damaged_file_stops_the_command_with_one_line(name, tiny_data, best_checkpoint, tmp_path, capsys):
    """Through the command line: exit status 2 and one line, for a truncated file of each kind."""
    source = {"features": tiny_data / TRAIN_FEATURES, "labels": tiny_data / TRAIN_LABELS, "checkpoint": best_checkpoint}[name]
    data = copy_data(tiny_data, tmp_path / "data")
    damaged_file = data / source.name if name != "checkpoint" else tmp_path / "shared.ckpt"
    damaged_file.write_bytes(source.read_bytes()[: source.stat().st_size * 2 // 3])
    if name == "checkpoint":
        args = ["predict", "--ckpt_path", str(damaged_file)]
    else:
        args = ["fit", "--trainer.max_epochs", "1"]
    line = fails_with(tmp_path, capsys, args[0], "--config", BASELINE, "--data.data_dir", str(data), *args[1:])
    assert damaged_file.name in line

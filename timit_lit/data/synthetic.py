"""A TIMIT-shaped synthetic data set, for the demo and the tests.

The course's ``timit_11`` files cannot be redistributed, so the project makes its own
files of the same shape and layout: utterances of phones drawn from a Markov chain,
each phone lasting several frames, 13 smooth "cepstral" features per frame with
deltas and delta-deltas (39 dims), spliced +-5 frames with edge padding inside each
utterance (429 dims), standardised, labels saved as strings '0'..'38'. Consecutive rows
of one utterance share 10 of their 11 frames, exactly as in the real files.

    python -m timit_lit.synthetic OUT_DIR --train-utterances 4000 --test-utterances 1400

(The command's module, :mod:`timit_lit.synthetic`, is this one's public name.)

Everything is deterministic in ``seed``; utterance ``i`` is the same whatever the total.

Generated files must never pass for the course's: the generator writes only into a folder
that is missing, empty, or holds a set it generated, and marks every set it writes with
``synthetic.json`` (its settings and each file's size), which the data module reads to say
"generated data" in every run on it (:func:`generated_files`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from timit_lit.atomic import atomic_file, atomic_path
from timit_lit.data.files import FRAME_DIMS, report
from timit_lit.errors import InputError

NUM_PHONES = 39
SILENCE = 38
STATIC_DIMS = 13
CONTEXT = 5  # frames either side of the centre
ROW_DIMS = FRAME_DIMS * (2 * CONTEXT + 1)  # 429
FILE_NAMES = ("train_11.npy", "train_label_11.npy", "test_11.npy", "test_label_11.npy")
MARKER = "synthetic.json"  # beside the files of every generated set: its settings and files


@dataclass(frozen=True)
class _Language:
    """What all utterances share: phone sounds, durations and which phone follows which."""

    means: np.ndarray  # (39, 13) target spectrum of each phone
    mean_frames: np.ndarray  # (39,) average duration of each phone, in frames
    transitions: np.ndarray  # (39, 39) next-phone probabilities, no self loops


def _language(seed: int) -> _Language:
    rng = np.random.default_rng([seed, 7919])
    means = rng.normal(0.0, 1.0, (NUM_PHONES, STATIC_DIMS))
    means[SILENCE] *= 0.3  # silence: close to the mean spectrum
    mean_frames = rng.uniform(3.0, 12.0, NUM_PHONES)
    transitions = rng.dirichlet(np.full(NUM_PHONES, 0.3), size=NUM_PHONES)
    np.fill_diagonal(transitions, 0.0)
    transitions /= transitions.sum(axis=1, keepdims=True)
    return _Language(means, mean_frames, transitions)


def _phone_frames(lang: _Language, rng: np.random.Generator, min_phones: int, max_phones: int) -> np.ndarray:
    """The frame labels of one utterance: a phone sequence, each phone repeated for its duration."""
    n_phones = int(rng.integers(min_phones, max_phones + 1))
    phones = [int(rng.integers(NUM_PHONES))]
    for _ in range(n_phones - 1):
        phones.append(int(rng.choice(NUM_PHONES, p=lang.transitions[phones[-1]])))
    phones = np.array(phones)
    durations = 1 + rng.poisson(lang.mean_frames[phones] - 1.0)
    return np.repeat(phones, durations)


def _smooth(x: np.ndarray) -> np.ndarray:
    """A 5-tap moving average along time (coarticulation: frames blend into their neighbours)."""
    padded = np.pad(x, ((2, 2), (0, 0)), mode="edge")
    weights = (0.1, 0.2, 0.4, 0.2, 0.1)
    return sum(w * padded[k : k + len(x)] for k, w in enumerate(weights))


def _deltas(x: np.ndarray) -> np.ndarray:
    """HTK/Kaldi-style regression deltas over +-2 frames, as in the course features."""
    padded = np.pad(x, ((2, 2), (0, 0)), mode="edge")
    t = len(x)
    return (padded[3 : 3 + t] - padded[1 : 1 + t] + 2 * (padded[4 : 4 + t] - padded[0:t])) / 10.0


def _frames(lang: _Language, labels: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """39-dim frames (static, delta, delta-delta) of one utterance with the given frame labels."""
    speaker = rng.normal(0.0, 0.3, STATIC_DIMS)
    static = _smooth(lang.means[labels])
    static += noise * (_smooth(rng.normal(0.0, 1.0, static.shape)) + 0.5 * rng.normal(0.0, 1.0, static.shape))
    static += speaker
    delta = _deltas(static)
    return np.hstack([static, delta, _deltas(delta)])


def splice(frames: np.ndarray, context: int = CONTEXT) -> np.ndarray:
    """Rows of ``2*context+1`` consecutive frames, repeating the edge frames of the utterance."""
    padded = np.pad(frames, ((context, context), (0, 0)), mode="edge")
    return np.hstack([padded[k : k + len(frames)] for k in range(2 * context + 1)])


def _split_labels(lang, seed, split, count, min_phones, max_phones):
    return [
        _phone_frames(lang, np.random.default_rng([seed, split, i, 0]), min_phones, max_phones) for i in range(count)
    ]


def write_synthetic_timit(
    out_dir: str | os.PathLike,
    train_utterances: int = 300,
    test_utterances: int = 60,
    seed: int = 0,
    dtype: str = "float32",
    noise: float = 2.0,
    test_labels: bool = True,
    min_phones: int = 8,
    max_phones: int = 40,
) -> dict[str, list[int]]:
    """Write ``train_11.npy``, ``train_label_11.npy``, ``test_11.npy`` (and ``test_label_11.npy``).

    Returns the number of rows of each utterance, per split, in file order. Each file is
    written under a temporary name and renamed, so an interrupted run leaves no half file.
    ``out_dir`` must be missing, empty, or a set the generator wrote (else InputError);
    ``synthetic.json`` marks it as generated.
    """
    out = Path(out_dir)
    check_generator_may_write(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"train_utterances": train_utterances, "test_utterances": test_utterances, "seed": seed, "dtype": dtype,
                "noise": noise, "test_labels": test_labels, "min_phones": min_phones, "max_phones": max_phones}
    # Marked before the first file is written, so that an interrupted run's folder is still ours.
    _write_marker(out, settings, files=None)
    if not test_labels:  # an earlier generated set's (checked above), not this one's
        (out / "test_label_11.npy").unlink(missing_ok=True)
    lang = _language(seed)
    splits = {
        "train": _split_labels(lang, seed, 0, train_utterances, min_phones, max_phones),
        "test": _split_labels(lang, seed, 1, test_utterances, min_phones, max_phones),
    }
    # Standardise with statistics of (at most) the first 200 training utterances.
    sample = [_frames(lang, lab, np.random.default_rng([seed, 0, i, 1]), noise) for i, lab in enumerate(splits["train"][:200])]
    sample = np.concatenate(sample) if sample else np.zeros((1, FRAME_DIMS))
    mean, std = sample.mean(0), sample.std(0) + 1e-5

    for split_id, (split, utterance_labels) in enumerate(splits.items()):
        n_rows = sum(len(lab) for lab in utterance_labels)
        with atomic_path(out / f"{split}_11.npy") as tmp:
            features = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(n_rows, ROW_DIMS))
            row = 0
            for i, lab in enumerate(utterance_labels):
                frames = (_frames(lang, lab, np.random.default_rng([seed, split_id, i, 1]), noise) - mean) / std
                features[row : row + len(lab)] = splice(frames)
                row += len(lab)
            features.flush()
            del features
        if split == "train" or test_labels:
            labels = np.concatenate(utterance_labels) if utterance_labels else np.zeros(0, int)
            with atomic_file(out / f"{split}_label_11.npy") as f:
                np.save(f, labels.astype("<U2"))
    written = [name for name in FILE_NAMES if (out / name).is_file()]
    _write_marker(out, settings, files={name: (out / name).stat().st_size for name in written})
    return {split: [len(lab) for lab in labs] for split, labs in splits.items()}


def _write_marker(out: Path, settings: dict, files: dict[str, int] | None) -> None:
    """``synthetic.json``: what wrote the folder, with which settings, and each file's size
    (``files`` None while the set is being written)."""
    marker = {"written_by": "timit_lit.synthetic", "note": "generated data, not speech", "settings": settings,
              "files": files}
    with atomic_file(out / MARKER, "w") as f:
        json.dump(marker, f, indent=1)
        f.write("\n")


def _marker(data_dir: Path) -> dict | None:
    try:
        marker = json.loads((Path(data_dir) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("written_by") == "timit_lit.synthetic" else None


def generated_files(data_dir: str | os.PathLike) -> list[str]:
    """The course-named files of ``data_dir`` that the generator wrote: those its marker
    lists with their size as it is now (a file the course's download replaced is not)."""
    marker = _marker(Path(data_dir))
    if marker is None:
        return []
    present = [name for name in FILE_NAMES if (Path(data_dir) / name).is_file()]
    if marker.get("files") is None:  # interrupted while writing: whatever it left is its own
        return present
    sizes = marker["files"] if isinstance(marker["files"], dict) else {}
    return [name for name in present if sizes.get(name) == (Path(data_dir) / name).stat().st_size]


def check_generator_may_write(out: Path) -> None:
    """The generator writes only into a folder that is missing, empty, or holds a set it generated:
    an InputError (one line) for any other, so that it never writes fake files under the
    course's names beside, or over, real ones."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: is a file; the generator writes its set into a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if _marker(out) is None:
        raise InputError(f"{out}: not a folder of generated data (no {MARKER}): the generator writes only into a "
                         f"missing or empty folder, or one it generated; choose another folder")
    foreign = [name for name in FILE_NAMES if (out / name).is_file() and name not in generated_files(out)]
    if foreign:
        raise InputError(f"{out}: {', '.join(foreign)} not written by the generator (changed since {MARKER} was "
                         f"written): it writes over no other files; choose another folder")


def has_timit_files(data_dir: str | os.PathLike) -> bool:
    """True when ``data_dir`` holds the three course files (test labels are optional)."""
    return all((Path(data_dir) / name).is_file() for name in FILE_NAMES[:3])


def say_if_generated(data_dir: Path, synthetic: bool) -> None:
    """Generated data never passes for speech: a run on it says so (call on rank 0), and
    warns where its config is one for real data (``data.synthetic`` false)."""
    generated = generated_files(data_dir)
    if not generated:
        return
    what = f"{', '.join(generated)} written by timit_lit.synthetic ({MARKER})"
    if synthetic:
        report(f"{data_dir}: generated data, not speech: {what}")
    else:
        warnings.warn(f"{data_dir} holds GENERATED data, not TIMIT speech: {what}. What this run measures "
                      f"says nothing about speech. The course's files: README, 'The course data'; generated data "
                      f"on purpose: --data.synthetic true", UserWarning, stacklevel=2)


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m timit_lit.synthetic", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out_dir", help="folder to write the .npy files into")
    parser.add_argument("--train-utterances", type=int, default=300, help="training utterances (~190 rows each)")
    parser.add_argument("--test-utterances", type=int, default=60, help="test utterances")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--noise", type=float, default=2.0, help="feature noise; higher is harder")
    parser.add_argument("--no-test-labels", action="store_true", help="leave out test_label_11.npy, as the course does")
    a = parser.parse_args(args)
    try:
        lengths = write_synthetic_timit(
            a.out_dir, a.train_utterances, a.test_utterances, a.seed, a.dtype, a.noise, not a.no_test_labels
        )
    except InputError as error:
        print(f"timit_lit.synthetic: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    for split, lens in lengths.items():
        print(f"{split}: {len(lens)} utterances, {sum(lens)} rows")


if __name__ == "__main__":
    main()

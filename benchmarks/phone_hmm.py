"""Choose the phone-level decoder's settings on validation utterances, then score a split once.

    # 1. posteriors of a checkpoint on its validation utterances (cached), then the grid:
    python benchmarks/phone_hmm.py tune --ckpt RUN.ckpt --data_dir ../data/replica --cache DIR \
        --val_ratio 0.2 --split utterance [--phase_average]
    # 2. the chosen settings, once, on the test split:
    python benchmarks/phone_hmm.py score --ckpt RUN.ckpt --data_dir ../data/replica --cache DIR --split_name test \
        --transition_weight 0.25 --lm_weight 1 --insertion_penalty 2 --prior_weight 0.5 --min_duration 2 --duration_scale 0.3

``tune`` prints, for the undecoded frames, the frame Viterbi of :mod:`timit_lit.decoding`
(transition weights) and the phone decoder of :mod:`timit_lit.phone_hmm` (a staged grid:
each stage varies one group of settings around the best so far, chosen by phone error
rate), one line per setting: frame accuracy, PER and its substitutions, deletions and
insertions per reference phone, and decoding time. ``score`` prints the same for the
given settings, with boundary/inner accuracy and the most frequent confusions. The
posteriors come from the checkpoint's network (its weights and phone statistics read
with ``weights_only=True``), over the same validation utterances as its fit used
(``--val_ratio``, ``--split``, ``--split_seed``), or over the test file.
"""

from __future__ import annotations

import argparse
import inspect
import time
from pathlib import Path

import numpy as np
import torch

from timit_lit.data import TimitDataModule
from timit_lit.decoding import PhoneStatistics, viterbi_decode
from timit_lit.edit_alignment import frame_edit_counts
from timit_lit.models import RecurrentPhoneClassifier
from timit_lit.phone_hmm import PhoneHmm, decode_segments, mean_durations
from timit_lit.phones import PHONES
from timit_lit.scoring import boundary_accuracy


def posteriors(args, split: str) -> dict:
    """Log posteriors (frames x phones, float32), labels and segment offsets of ``split``, cached in ``args.cache``."""
    name = f"{split}{'_phase' if args.phase_average else ''}.npz"
    cache = args.cache / name
    if cache.is_file():
        return dict(np.load(cache))
    checkpoint = torch.load(args.ckpt, map_location="cpu", weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    accepted = inspect.signature(RecurrentPhoneClassifier).parameters
    model = RecurrentPhoneClassifier(**{k: v for k, v in hparams.items() if k in accepted},
                                     phase_average=args.phase_average)
    model.on_load_checkpoint(checkpoint)  # (a checkpoint from before the statistics were buffers)
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    saved = checkpoint["datamodule_hyper_parameters"]
    data = TimitDataModule(args.data_dir, val_ratio=args.val_ratio, split=args.split, split_seed=args.split_seed,
                           context=saved["context"], batch_by="utterances", eval_batch_size=args.batch_utterances)
    data.setup("fit" if split == "val" else "test")
    loader = data.val_dataloader() if split == "val" else data.test_dataloader()
    start, parts = time.perf_counter(), []
    with torch.no_grad():
        for batch in loader:
            parts.append(model.real_frames(*model.frame_logits(batch))[0].log_softmax(dim=1))
    dataset = data.dataset(split)
    rows = dataset.rows.numpy()
    result = {"log_posteriors": torch.cat(parts).numpy().astype(np.float32), "labels": dataset.labels[rows].astype(np.int64),
              "offsets": dataset.row_space.segments(rows),
              **{key: np.asarray(value) for key, value in model.phone_statistics.state_dict().items()}}
    print(f"{split}: {len(rows):,} frames, {len(result['offsets']) - 1} segments, forward "
          f"{time.perf_counter() - start:.0f} s{' (phase averaged)' if args.phase_average else ''}")
    args.cache.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **result)
    return result


def statistics(split_data: dict) -> PhoneStatistics:
    """The checkpoint's phone statistics (those of its training split), kept beside the posteriors."""
    return PhoneStatistics.from_state_dict({key: split_data[key] for key in ("frames", "initial", "transitions", "smoothing")})


def measure(name: str, decode, split_data: dict, details: bool = False) -> dict:
    start = time.perf_counter()
    decoded = decode(torch.from_numpy(split_data["log_posteriors"]), split_data["offsets"]).numpy()
    seconds = time.perf_counter() - start
    labels, offsets = split_data["labels"], split_data["offsets"]
    counts = frame_edit_counts(decoded, labels, offsets)
    rates = counts.rates()
    row = {"name": name, "acc": float((decoded == labels).mean()), **rates, "seconds": seconds}
    print(f"| {name} | {row['acc']:.4f} | {rates['per']:.4f} | {rates['sub']:.4f} | {rates['del']:.4f} | "
          f"{rates['ins']:.4f} | {seconds:.1f} |", flush=True)
    if details:
        where = boundary_accuracy(decoded, labels, offsets)
        print(f"    acc_boundary {where['acc_boundary']:.4f}, acc_inner {where['acc_inner']:.4f}, "
              f"errors_at_boundary {where['errors_at_boundary']:.3f}; edits {counts.substitutions} S, "
              f"{counts.deletions} D, {counts.insertions} I of {counts.reference_phones} reference phones")
        pairs = ", ".join(f"{PHONES[r]}->{PHONES[h]} {n}" for (r, h), n in counts.confusions.most_common(10))
        print(f"    most frequent substitutions: {pairs}")
        print(f"    most deleted: {', '.join(f'{PHONES[p]} {n}' for p, n in counts.deleted.most_common(6))}; "
              f"most inserted: {', '.join(f'{PHONES[p]} {n}' for p, n in counts.inserted.most_common(6))}")
    return row


def phone_decoder(stats: PhoneStatistics, settings: dict):
    hmm = PhoneHmm.from_statistics(stats, **settings)
    return lambda scores, offsets: decode_segments(scores, offsets, hmm)


def frame_viterbi(stats: PhoneStatistics, weight: float, prior_weight: float = 0.0):
    return lambda scores, offsets: viterbi_decode(scores, offsets, stats, weight, prior_weight)


HEADER = "| decoder | frame acc | PER | sub | del | ins | decode s |\n|---|---|---|---|---|---|---|"


def describe(settings: dict) -> str:
    return ("phone decoder: " + ", ".join(f"{k} {v:g}" for k, v in settings.items()))


def tune(args) -> None:
    val = posteriors(args, "val")
    stats = statistics(val)
    print("mean durations (frames): " + ", ".join(f"{p} {d:.1f}" for p, d in zip(PHONES, mean_durations(stats))))
    print(HEADER)
    measure("undecoded (framewise argmax)", lambda s, o: s.argmax(1), val)
    for weight in (0.25, 0.5, 1.0):
        measure(f"frame Viterbi, transition weight {weight:g}", frame_viterbi(stats, weight), val)
    best = {"duration_scale": 0.0, "min_duration": 1, "lm_weight": 0.0, "insertion_penalty": 0.0, "prior_weight": 0.0,
            "duration_weight": 0.0}
    if args.start:  # start from earlier choices, as key=value pairs
        best.update({key: float(value) for key, value in (pair.split("=") for pair in args.start)})
        best["min_duration"] = int(best["min_duration"])
    measured = {}  # settings already decoded: their PER

    def per_of(settings: dict) -> float:
        key = tuple(sorted(settings.items()))
        if key not in measured:
            measured[key] = measure(describe(settings), phone_decoder(stats, settings), val)["per"]
        return measured[key]

    best_per = per_of(best)
    stages = [
        {"duration_weight": [0.25, 0.5, 1.0, 2.0]},
        {"min_duration": [2, 3, 4]},
        {"duration_scale": [0.2, 0.3, 0.4, 0.5, 0.6]},
        {"lm_weight": [0.25, 0.5, 1.0, 2.0]},
        {"prior_weight": [0.25, 0.5, 1.0]},
        {"insertion_penalty": [-2.0, -1.0, 1.0, 2.0, 4.0]},
        {"lm_weight": [0.25, 0.5, 1.0, 2.0, 3.0]},
        {"min_duration": [1, 2, 3, 4]},
        {"duration_scale": [0.0, 0.2, 0.3, 0.4, 0.5]},
        {"insertion_penalty": [-2.0, -1.0, 0.0, 1.0, 2.0, 4.0]},
        {"duration_weight": [0.0, 0.25, 0.5, 1.0, 2.0]},
    ][args.first_stage:]
    for stage in stages:
        ((key, values),) = stage.items()
        for value in values:
            settings = {**best, key: value}
            per = per_of(settings)
            if per < best_per:
                best, best_per = settings, per
        print(f"| best so far: {describe(best)} | | {best_per:.4f} | | | | |")
    print(f"chosen: {describe(best)}")


def score(args) -> None:
    data = posteriors(args, args.split_name)
    stats = statistics(data)
    settings = {"duration_scale": args.duration_scale, "min_duration": args.min_duration, "lm_weight": args.lm_weight,
                "insertion_penalty": args.insertion_penalty, "prior_weight": args.prior_weight,
                "duration_weight": args.duration_weight}
    print(HEADER)
    measure("undecoded (framewise argmax)", lambda s, o: s.argmax(1), data, details=True)
    measure(f"frame Viterbi, transition weight {args.transition_weight:g}", frame_viterbi(stats, args.transition_weight),
            data, details=True)
    measure(describe(settings), phone_decoder(stats, settings), data, details=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["tune", "score", "posteriors"],
                        help="posteriors: only compute and cache those of --split_name")
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--data_dir", type=Path, required=True)
    parser.add_argument("--cache", type=Path, required=True, help="folder for the posteriors (reused when there)")
    parser.add_argument("--val_ratio", type=float, default=0.2)
    parser.add_argument("--split", default="utterance")
    parser.add_argument("--split_seed", type=int, default=0)
    parser.add_argument("--split_name", choices=["val", "test"], default="val", help="score: which split")
    parser.add_argument("--phase_average", action="store_true")
    parser.add_argument("--batch_utterances", type=int, default=64)
    parser.add_argument("--transition_weight", type=float, default=0.25)
    parser.add_argument("--lm_weight", type=float, default=1.0)
    parser.add_argument("--insertion_penalty", type=float, default=0.0)
    parser.add_argument("--prior_weight", type=float, default=0.0)
    parser.add_argument("--min_duration", type=int, default=1)
    parser.add_argument("--duration_scale", type=float, default=0.0)
    parser.add_argument("--duration_weight", type=float, default=0.0)
    parser.add_argument("--start", nargs="*", default=[], help="tune: start from these settings (key=value ...)")
    parser.add_argument("--first_stage", type=int, default=0, help="tune: skip the stages before this one")
    args = parser.parse_args()
    if args.command == "posteriors":
        posteriors(args, args.split_name)
    else:
        tune(args) if args.command == "tune" else score(args)


if __name__ == "__main__":
    main()

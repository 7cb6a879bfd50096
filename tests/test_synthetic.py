"""The synthetic generator: course layout, real temporal structure, determinism."""

import json

import numpy as np
import pytest

from timit_lit.synthetic import FILE_NAMES, FRAME_DIMS, MARKER, ROW_DIMS, generated_files, main, write_synthetic_timit


def test_files_have_the_course_layout(tmp_path):
    lengths = write_synthetic_timit(tmp_path, train_utterances=4, test_utterances=2)
    train = np.load(tmp_path / "train_11.npy")
    labels = np.load(tmp_path / "train_label_11.npy")
    assert train.shape == (sum(lengths["train"]), ROW_DIMS) and train.dtype == np.float32
    assert labels.dtype == np.dtype("<U2") and set(labels) <= {str(i) for i in range(39)}
    assert np.load(tmp_path / "test_11.npy").shape == (sum(lengths["test"]), ROW_DIMS)
    assert len(np.load(tmp_path / "test_label_11.npy")) == sum(lengths["test"])


def test_consecutive_rows_of_an_utterance_share_ten_frames(tmp_path):
    lengths = write_synthetic_timit(tmp_path, train_utterances=3, test_utterances=1)
    frames = np.load(tmp_path / "train_11.npy").reshape(-1, 11, FRAME_DIMS)
    start = 0
    for n in lengths["train"]:
        utt = frames[start : start + n]
        assert np.array_equal(utt[1:, :10], utt[:-1, 1:]), "rows inside an utterance must overlap by 10 frames"
        assert np.array_equal(utt[0, :5], np.repeat(utt[0, 5:6], 5, axis=0)), "edge frames pad the utterance start"
        start += n
    # Across a boundary the overlap breaks.
    b = lengths["train"][0]
    assert not np.array_equal(frames[b, :10], frames[b - 1, 1:])


def test_phones_last_several_frames(tmp_path):
    write_synthetic_timit(tmp_path, train_utterances=20, test_utterances=1)
    labels = np.load(tmp_path / "train_label_11.npy")
    runs = 1 + np.count_nonzero(labels[1:] != labels[:-1])
    assert 3 <= len(labels) / runs <= 15


def test_deterministic_and_prefix_stable(tmp_path):
    write_synthetic_timit(tmp_path / "a", train_utterances=5, test_utterances=2, seed=3)
    write_synthetic_timit(tmp_path / "b", train_utterances=5, test_utterances=2, seed=3)
    write_synthetic_timit(tmp_path / "c", train_utterances=2, test_utterances=2, seed=3)
    for name in ("train_11.npy", "train_label_11.npy", "test_11.npy"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    # Utterance i is the same whatever the total; only the standardisation sample differs.
    a = np.load(tmp_path / "a" / "train_label_11.npy")
    c = np.load(tmp_path / "c" / "train_label_11.npy")
    assert np.array_equal(a[: len(c)], c)


def test_command_line_options(tmp_path, capsys):
    main([str(tmp_path), "--train-utterances", "3", "--test-utterances", "2", "--dtype", "float64", "--no-test-labels"])
    assert np.load(tmp_path / "train_11.npy").dtype == np.float64
    assert not (tmp_path / "test_label_11.npy").exists()
    assert "train: 3 utterances" in capsys.readouterr().out


def test_context_frames_carry_information(tmp_path):
    """As in speech, the 11-frame row predicts the phone better than its centre frame alone."""
    import torch

    write_synthetic_timit(tmp_path, train_utterances=60, test_utterances=20)
    x, xt = (torch.from_numpy(np.load(tmp_path / f"{s}_11.npy")) for s in ("train", "test"))
    y, yt = (torch.from_numpy(np.load(tmp_path / f"{s}_label_11.npy").astype(np.int64)) for s in ("train", "test"))
    centre = slice(5 * FRAME_DIMS, 6 * FRAME_DIMS)

    def accuracy(columns):
        torch.manual_seed(0)
        model = torch.nn.Linear(x[:, columns].shape[1], 39)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(30):
            loss = torch.nn.functional.cross_entropy(model(x[:, columns]), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return (model(xt[:, columns]).argmax(1) == yt).float().mean().item()

    full, alone = accuracy(slice(None)), accuracy(centre)
    print(f"full row {full:.3f}, centre frame {alone:.3f}")
    assert full > alone + 0.05


def test_a_generated_set_is_marked_and_rewritten_only_where_it_is_one(tmp_path, capsys):
    out = tmp_path / "generated"
    write_synthetic_timit(out, train_utterances=3, test_utterances=1)
    marker = json.loads((out / MARKER).read_text())
    assert marker["written_by"] == "timit_lit.synthetic" and marker["settings"]["train_utterances"] == 3
    assert marker["files"] == {name: (out / name).stat().st_size for name in FILE_NAMES}
    assert generated_files(out) == list(FILE_NAMES)
    # Its own folder it may write again (here without test labels: the old ones go).
    main([str(out), "--train-utterances", "2", "--test-utterances", "1", "--no-test-labels"])
    assert not (out / "test_label_11.npy").exists() and generated_files(out) == list(FILE_NAMES[:3])
    capsys.readouterr()


def refused(capsys, folder) -> str:
    """The generator's command on ``folder``: exit 2 and its one line."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(folder), "--train-utterances", "2", "--test-utterances", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_the_generator_writes_over_no_other_files(tmp_path, capsys):
    # A folder of other files (a home folder, a project): refused, left as it was.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "notes.txt").write_text("mine")
    assert refused(capsys, elsewhere) == (f"timit_lit.synthetic: error: {elsewhere}: not a folder of generated data "
                                          f"(no {MARKER}): the generator writes only into a missing or empty folder, "
                                          f"or one it generated; choose another folder")
    assert [p.name for p in elsewhere.iterdir()] == ["notes.txt"]
    # The course's files (no marker): refused, untouched.
    course = tmp_path / "timit_11"
    write_synthetic_timit(course, train_utterances=2, test_utterances=1, seed=9)
    (course / MARKER).unlink()
    before = {p.name: p.read_bytes() for p in course.iterdir()}
    assert "not a folder of generated data" in refused(capsys, course)
    # A generated folder whose train_11.npy the course's download replaced: refused, as it is no longer all generated.
    mixed = tmp_path / "mixed"
    write_synthetic_timit(mixed, train_utterances=3, test_utterances=1)
    np.save(mixed / "train_11.npy", np.load(course / "train_11.npy"))
    line = refused(capsys, mixed)
    assert line.endswith(f"{mixed}: train_11.npy not written by the generator (changed since {MARKER} was written): "
                         f"it writes over no other files; choose another folder")
    assert generated_files(mixed) == ["train_label_11.npy", "test_11.npy", "test_label_11.npy"]
    assert {p.name: p.read_bytes() for p in course.iterdir()} == before
    # A file where the folder should be.
    (tmp_path / "file").write_text("x")
    assert refused(capsys, tmp_path / "file").endswith("is a file; the generator writes its set into a folder")

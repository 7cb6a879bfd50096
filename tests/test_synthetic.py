"""The synthetic generator: course layout, real temporal structure, determinism."""

import numpy as np

from timit_lit.synthetic import FRAME_DIMS, ROW_DIMS, main, write_synthetic_timit


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

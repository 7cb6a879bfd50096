"""What a fit leaves in TensorBoard: learning rate, frames/s, validation figures, HParams, config.yaml."""

import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from matplotlib.image import imread
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from timit_lit import drawing
from timit_lit.callbacks import monitoring

from helpers import BASELINE, FIGURES, run_in


def events(run_dir):
    return EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0}).Reload()


def scalars(run_dir):
    acc = events(run_dir)
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_learning_rate_and_throughput_once_per_epoch(trained_run):
    curves = scalars(trained_run)
    assert curves["lr-Adam"] == pytest.approx([0.002, 0.002])  # the FAST lr, at each of the 2 epochs
    assert len(curves["train/frames_per_s"]) == 2 and min(curves["train/frames_per_s"]) > 0
    assert "hp_metric" not in curves, "Lightning's placeholder metric is off"


def test_confusion_per_phone_and_segments_figures_for_each_validation_epoch(trained_run):
    acc = events(trained_run)
    for tag in ("val/confusion", "val/phone_acc", "val/segments"):
        images = acc.Images(tag)
        assert len(images) == 2, tag  # the 2 epochs; none from the sanity check
        assert images[0].step < images[1].step
        pixels = imread(io.BytesIO(images[-1].encoded_image_string), format="png")
        assert pixels.shape[0] > 300 and pixels.shape[1] > 600 and pixels.std() > 0.05, tag  # a drawing, not a blank


def test_hparams_hold_the_config_and_the_best_val_acc(trained_run):
    acc = events(trained_run)
    plugin = {tag.split("/")[-1]: plugin_data_pb2.HParamsPluginData.FromString(raw)
              for tag, raw in acc.PluginTagToContent("hparams").items()}
    assert sorted(plugin) == ["experiment", "session_end_info", "session_start_info"]
    assert [m.name.tag for m in plugin["experiment"].experiment.metric_infos] == ["hp/best_val_acc"]
    hparams = plugin["session_start_info"].session_start_info.hparams
    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert hparams["model/lr"].number_value == pytest.approx(config["model"]["init_args"]["lr"]) == pytest.approx(0.002)
    assert hparams["data/batch_size"].number_value == 256
    assert hparams["model/activation"].string_value == "sigmoid"
    assert hparams["trainer/max_epochs"].number_value == 2
    curves = scalars(trained_run)
    best = curves["hp/best_val_acc"]
    assert best[-1] == pytest.approx(max(curves["val/acc"])) and best == sorted(best)


def test_saved_config_reruns_the_same_run(trained_run, tmp_path):
    """config.yaml in the run folder is the whole run: rerun as it is, it gives the same curves."""
    cli = run_in(tmp_path, "fit", "--config", str(trained_run / "config.yaml"))
    rerun = tmp_path / "lightning_logs" / "version_0"
    assert (rerun / "config.yaml").read_text() == (trained_run / "config.yaml").read_text()
    assert cli.trainer.current_epoch == 2
    first, second = scalars(trained_run), scalars(rerun)
    for tag in ("train/loss", "val/loss", "val/acc"):
        assert second[tag] == pytest.approx(first[tag], abs=1e-6), tag


def test_figures_can_be_turned_off_and_no_logger_is_fine(tiny_data, tmp_path):
    common = ["--config", BASELINE, "--data.data_dir", str(tiny_data), "--trainer.max_epochs", "1",
              "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
    run_in(tmp_path, "fit", *common, "--figures.enabled", "false")
    acc = events(tmp_path / "lightning_logs" / "version_0")
    assert acc.Tags()["images"] == [] and "val/acc" in acc.Tags()["scalars"]
    run_in(tmp_path, "fit", *common, *FIGURES, "--figures.utterances", "0")
    acc = events(tmp_path / "lightning_logs" / "version_1")
    assert sorted(acc.Tags()["images"]) == ["val/confusion", "val/phone_acc"]
    # One validation batch of rows: PER and the boundary accuracies of the rows it holds.
    assert {"val/per", "val/acc_boundary", "val/acc_inner"} <= set(acc.Tags()["scalars"])
    # Every callback added by the CLI copes with a run that logs nothing, and the run writes no
    # config.yaml into the working directory (where a file of the user's own would be overwritten).
    workdir = tmp_path / "no_logger"
    workdir.mkdir()
    (workdir / "config.yaml").write_text("# the user's own\n")
    cli = run_in(workdir, "fit", *common, "--trainer.logger", "false")
    assert "val/acc" in cli.trainer.callback_metrics
    assert (workdir / "config.yaml").read_text() == "# the user's own\n"
    assert sorted(p.name for p in workdir.iterdir()) == ["checkpoints", "config.yaml"]


def test_throughput_counts_every_row_of_every_process(monkeypatch):
    """frames/s = rows of all processes / seconds from the epoch's start to its last batch's end,
    with a batch being one (features, labels) pair or a list of them (model.steps_per_call)."""
    clock = iter([10.0, 11.0, 12.5])  # epoch start, end of batch 0, end of batch 1
    monkeypatch.setattr(monitoring.time, "perf_counter", lambda: next(clock))
    logged = {}
    module = SimpleNamespace(log=lambda name, value, **kwargs: logged.update({name: value}))
    trainer = SimpleNamespace(world_size=2)
    x, y = torch.zeros(64, 429), torch.zeros(64, dtype=torch.long)
    callback = monitoring.EpochThroughput()
    callback.on_train_epoch_start(trainer, module)
    callback.on_train_batch_end(trainer, module, None, (x, y), 0)
    callback.on_train_batch_end(trainer, module, None, [(x, y), (x[:10], y[:10])], 1)
    callback.on_train_epoch_end(trainer, module)
    assert logged == {"train/frames_per_s": pytest.approx((64 + 64 + 10) * 2 / 2.5)}


def test_segments_figure_of_one_utterance_is_a_drawing(tmp_path):
    """One example (a lone subfigure); phones too short to name stay unnamed."""
    rng = np.random.default_rng(0)
    reference = np.repeat([38, 3, 17, 3, 38], [200, 2, 150, 90, 140])  # sil ae er ae sil
    predicted = reference.copy()
    predicted[[201, 250]] = 5  # uw for a frame, twice
    example = {"frames": rng.normal(size=(len(reference), 39)), "reference": reference, "predicted": predicted,
               "title": "one utterance"}
    figure = drawing.segments_figure([example], list(drawing.PHONES), "title")
    figure.savefig(tmp_path / "one.png")
    pixels = imread(tmp_path / "one.png")
    assert pixels.shape[0] > 200 and pixels.shape[1] > 1000 and pixels.std() > 0.05
    names = [text.get_text() for subfig in figure.subfigs for ax in subfig.axes for text in ax.texts]
    assert names == ["sil", "er", "ae", "sil"] + ["sil", "er", "er", "ae", "sil"]  # reference, then predicted

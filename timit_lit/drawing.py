"""The figures a run draws for TensorBoard (:mod:`timit_lit.callbacks.figures`), with matplotlib
(no pyplot: no global backend state), the phone names on the axes."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from torchmetrics.utilities.plot import plot_single_or_multi_val

from timit_lit.phones import PHONES


def class_names(num_classes: int) -> list[str]:
    """The phone symbols, or the class numbers where the classes are not TIMIT's phones."""
    return list(PHONES) if num_classes == len(PHONES) else [str(k) for k in range(num_classes)]


def confusion_figure(confusion, counts: torch.Tensor, names: list[str], title: str) -> Figure:
    """The confusion matrix with each true class's row normalised to 1 (so the diagonal is
    the per-class accuracy), drawn by ``MulticlassConfusionMatrix.plot``."""
    rates = counts.double() / counts.sum(dim=1, keepdim=True).clamp(min=1)
    fig = Figure(figsize=(11, 10), layout="constrained")  # no pyplot: Agg, no global backend state
    ax = fig.add_subplot()
    confusion.plot(val=rates, ax=ax, add_text=False, labels=names, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=8)
    ax.set_yticks(range(len(names)), names, rotation=0, fontsize=8)
    fig.colorbar(ax.images[0], ax=ax, shrink=0.8, label="fraction of the true phone's frames")
    ax.set_title(title)
    return fig


def per_class_figure(counts: torch.Tensor, names: list[str], title: str) -> Figure:
    """The accuracy (recall) of each class, diagonal / row sum of the confusion counts, drawn
    by torchmetrics' ``plot_single_or_multi_val``, with the class names along the x axis."""
    totals = counts.sum(dim=1)
    recall = counts.diagonal().double() / totals.clamp(min=1)
    overall = counts.diagonal().sum().item() / max(totals.sum().item(), 1)
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    ax = fig.add_subplot()
    plot_single_or_multi_val(recall, ax=ax, lower_bound=0.0, upper_bound=1.0, name="accuracy")
    if ax.get_legend() is not None:
        ax.get_legend().remove()  # one entry per class: the x axis names them instead
    for marker in ax.get_lines():
        marker.set_color("tab:blue")
    ax.get_xaxis().set_visible(True)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=9)
    mean = ax.axhline(overall, color="tab:orange", linewidth=1)
    ax.legend([mean], [f"all frames: {overall:.3f}"], loc="lower right")
    ax.set_title(title)
    return fig


def _phone_colours(num_classes: int) -> list:
    """One colour per class, the same in every strip (tab20 and tab20b: 40 distinct colours)."""
    colours = [*colormaps["tab20"].colors, *colormaps["tab20b"].colors]
    return [colours[k % len(colours)] for k in range(num_classes)]


def _phone_strip(ax, classes: np.ndarray, names: list[str], colours: list, label: str) -> None:
    """``classes`` (one per frame) as a strip of phone segments, each named where it is wide enough."""
    first = np.flatnonzero(np.r_[True, classes[1:] != classes[:-1]])
    widths = np.diff(np.r_[first, len(classes)])
    phones = classes[first]
    ax.broken_barh(list(zip(first - 0.5, widths)), (0, 1), facecolors=[colours[c] for c in phones],
                   edgecolor="white", linewidth=0.6)
    min_width = len(classes) / 70  # frames a 3-letter name needs at this figure's width
    for start, width, phone in zip(first, widths, phones):
        if width >= min_width:
            dark = sum(colours[phone][:3]) < 1.5
            ax.text(start - 0.5 + width / 2, 0.5, names[phone], ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")
    ax.set_ylim(0, 1)
    ax.set_yticks([0.5], [label])
    ax.tick_params(axis="y", length=0)


def segments_figure(examples: list[dict], names: list[str], title: str) -> Figure:
    """For each example utterance (``frames``: frames x features, ``reference`` and
    ``predicted``: a class per frame, ``title``): its features as an image over time, each
    dimension standardised over the utterance, the reference's phone boundaries drawn on
    it, above the reference and the predicted phone segments (one colour per phone) and a
    strip marking the frames predicted wrong."""
    colours = _phone_colours(len(names))
    fig = Figure(figsize=(15, 3.3 * len(examples)), layout="constrained")
    fig.suptitle(title)
    for subfig, example in zip(np.atleast_1d(fig.subfigures(len(examples), 1, hspace=0.04)), examples):
        frames, reference, predicted = example["frames"], example["reference"], example["predicted"]
        ax_features, ax_reference, ax_predicted, ax_wrong = subfig.subplots(
            4, 1, sharex=True, gridspec_kw={"height_ratios": [3, 0.55, 0.55, 0.2], "hspace": 0.02})
        scaled = (frames - frames.mean(0)) / frames.std(0).clip(min=1e-6)
        ax_features.imshow(scaled.T.clip(-3, 3), aspect="auto", origin="lower", cmap="magma", interpolation="nearest",
                           extent=(-0.5, len(frames) - 0.5, -0.5, frames.shape[1] - 0.5))
        for edge in np.flatnonzero(reference[1:] != reference[:-1]):  # the reference's phone boundaries
            ax_features.axvline(edge + 0.5, color="white", linewidth=0.6, alpha=0.6)
        ax_features.set_ylabel("feature")
        ax_features.set_title(example["title"], fontsize=10, loc="left")
        _phone_strip(ax_reference, reference, names, colours, "reference")
        _phone_strip(ax_predicted, predicted, names, colours, "predicted")
        wrong = (predicted != reference).astype(float)[None, :]
        ax_wrong.imshow(wrong, aspect="auto", cmap="Reds", vmin=0, vmax=1.25, interpolation="nearest",
                        extent=(-0.5, len(frames) - 0.5, 0, 1))
        ax_wrong.set_yticks([0.5], ["wrong"])
        ax_wrong.tick_params(axis="y", length=0)
        ax_wrong.set_xlabel("frame (10 ms)")
    return fig

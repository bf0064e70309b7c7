"""The seed articles' pictures: curves per phase, training-time bars, sample images. Drawn from results alone."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # Figure objects, not pyplot: no global state, no display needed
from matplotlib.text import Text

from ..atomic import write_atomic
from .results import held_out

PHASE_COLORS = {"source": "#1f77b4", "transfer": "#2ca02c", "scratch": "#d62728", "frozen": "#1f77b4",
                "unfrozen": "#9467bd"}
RUN_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
              "#17becf"]  # matplotlib's tab10, so tables and charts of `compare` agree


def curves_figure(phases: dict[str, dict]) -> Figure:
    """Accuracy (top) and loss (bottom) per epoch, train vs validation, one column per phase."""
    fig = Figure(figsize=(4.2 * len(phases), 6.4))
    axes = fig.subplots(2, len(phases), squeeze=False)
    for col, (name, phase) in enumerate(phases.items()):
        epochs = [r["epoch"] for r in phase["history"]]
        for row, metric in enumerate(("accuracy", "loss")):
            ax = axes[row][col]
            ax.plot(epochs, [r[metric] for r in phase["history"]], "o-", label="train")
            ax.plot(epochs, [r[f"val_{metric}"] for r in phase["history"]], "s--", label="validation")
            title_axes(ax, f"{name} ({', '.join(phase['classes'])}): {metric}", fontsize=10)
            ax.set_xlabel("epoch")
            ax.set_ylabel(metric)
            ax.set_xticks(epochs)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    tight(fig)
    return fig


def overlay_curves_figure(title: str, metric: str, lines: list[tuple[str, list[dict], int]]) -> Figure:
    """One metric (accuracy or loss) per epoch, several phases on the same axes (e.g. transfer and scratch).

    `lines`: (phase name, its history, epochs before it) - an offset lets a phase continue the one before.
    Colour tells the phase, line style train (solid) from validation (dashed).
    """
    fig = Figure(figsize=(5.4, 3.6))
    ax = fig.subplots()
    ticks = set()
    for name, history, offset in lines:
        epochs = [offset + r["epoch"] for r in history]
        ticks.update(epochs)
        color = PHASE_COLORS.get(name, "gray")
        ax.plot(epochs, [r[metric] for r in history], "o-", color=color, label=f"{name} train")
        ax.plot(epochs, [r[f"val_{metric}"] for r in history], "s--", color=color, label=f"{name} validation")
    _axes(ax, f"{title}: {metric}", metric, ticks)
    tight(fig)
    return fig


def runs_curves_figure(phase: str, metric: str, runs: dict[str, list[dict]]) -> Figure:
    """Validation accuracy or loss of one phase, one line per run (for `transferkit compare`)."""
    fig = Figure(figsize=(5.4, 3.6))
    ax = fig.subplots()
    ticks = set()
    for i, (label, history) in enumerate(runs.items()):
        ticks.update(r["epoch"] for r in history)
        ax.plot([r["epoch"] for r in history], [r[f"val_{metric}"] for r in history], "o-",
                color=RUN_COLORS[i % len(RUN_COLORS)], label=label)
    _axes(ax, f"{phase}: validation {metric}", f"validation {metric}", ticks)
    tight(fig)
    return fig


def _axes(ax, title: str, ylabel: str, epochs: set[int]) -> None:
    title_axes(ax, title, fontsize=10)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    if len(epochs) <= 20:  # integer epochs; beyond 20 matplotlib's own ticks read better
        ax.set_xticks(sorted(epochs))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def time_figure(phases: dict[str, dict]) -> Figure:
    """Training time per phase, as the seeds compare them, with its held-out accuracy on each bar."""
    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    names = list(phases)
    seconds = [phases[n]["train_seconds"] for n in names]
    bars = ax.bar(names, seconds, color=[PHASE_COLORS.get(n, "gray") for n in names])
    for bar, n in zip(bars, names, strict=True):
        ax.annotate(f"{phases[n]['train_seconds']:.1f} s\nacc {held_out(phases[n], 'accuracy'):.4f}",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("training time (s)")
    title_axes(ax, "Training time per phase")
    ax.set_ylim(0, max(seconds) * 1.3 if seconds else 1)
    tight(fig)
    return fig


def samples_figure(groups: dict[str, tuple[np.ndarray, np.ndarray, list[str]]], per_group: int = 16) -> Figure:
    """A grid of images per group (e.g. source and target classes), each titled with its class name."""
    cols = 8
    shown = min(per_group, max((len(images) for images, _, _ in groups.values()), default=1))
    rows_per_group = max(1, -(-shown // cols))  # few images (--shots): no empty rows
    fig = Figure(figsize=(cols * 1.1, rows_per_group * len(groups) * 1.3))
    axes = fig.subplots(rows_per_group * len(groups), cols, squeeze=False)
    for g, (group, (images, labels, names)) in enumerate(groups.items()):
        for i in range(rows_per_group * cols):
            ax = axes[g * rows_per_group + i // cols][i % cols]
            ax.axis("off")
            if i < min(per_group, len(images)):
                _show(ax, images[i])
                title_axes(ax, f"{group}: {names[labels[i]]}", fontsize=7)
    tight(fig)
    return fig


def save_figures(figures: dict[str, Figure], directory: Path) -> list[Path]:
    paths = []
    for name, fig in figures.items():
        path = directory / f"{name}.png"
        write_atomic(path, lambda tmp, fig=fig: _savefig(fig, tmp))
        paths.append(path)
    return paths


def title_axes(ax, text: str, **style) -> None:
    # An explicit y is the height matplotlib would choose anyway (no tick labels sit above these axes), and
    # it skips matplotlib's search for overlaps at every draw: half the drawing time of the image grids.
    ax.set_title(text, y=1.0, **style)


def _show(ax, img: np.ndarray) -> None:
    """A uint8 image (H, W), (H, W, 1) or (H, W, 3) at its true brightness."""
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)


def plain_text(fig: Figure) -> Figure:
    """Every text of `fig` drawn as written: class names and folder names are data, and matplotlib would read
    a name such as `$x^$` as mathtext (and fail on it). Called before each layout and save."""
    for text in fig.findobj(Text):
        text.set_parse_math(False)
    return fig


def _savefig(fig: Figure, path: Path) -> None:
    plain_text(fig)
    with warnings.catch_warnings():
        # Class names in scripts the default font lacks (CJK, ...) draw as boxes; a warning per glyph is noise.
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig.savefig(path, dpi=100, format="png")


def tight(fig: Figure) -> None:
    plain_text(fig)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig.tight_layout()


def confusion_figure(matrix: np.ndarray, class_names: list[str], title: str = "Confusion matrix (validation)") -> Figure:
    """Counts of true (rows) against predicted (columns) classes, with the names on both axes."""
    k = len(class_names)
    cell = 0.6 if k <= 20 else max(0.12, 12 / k)  # many classes: a smaller figure, no counts in the cells
    fig = Figure(figsize=(2 + cell * k, 1.6 + cell * k))
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    if k <= 60:  # beyond, names would overlap: the report's tables name the classes
        ax.set_xticks(range(k), class_names, rotation=45, ha="right", fontsize=8 if k <= 20 else 5)
        ax.set_yticks(range(k), class_names, fontsize=8 if k <= 20 else 5)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    title_axes(ax, title, fontsize=10)
    tight(fig)
    return fig


def misclassified_figure(groups: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]]) -> Figure:
    """Validation images a model got wrong, titled 'true -> predicted'; one block per group (phase).

    `groups`: name -> (images, true labels, predicted labels, class names).
    """
    cols = 6
    heights = [max(1, -(-len(images) // cols)) for images, *_ in groups.values()] or [1]
    fig = Figure(figsize=(cols * 1.3, sum(heights) * 1.45 + 0.35 * len(heights)), layout="constrained")
    subfigs = fig.subfigures(len(heights), 1, squeeze=False, height_ratios=[h + 0.3 for h in heights])
    for subfig, rows, (group, (images, truth, predicted, names)) in zip(subfigs[:, 0], heights, groups.items(), strict=True):
        axes = subfig.subplots(rows, cols, squeeze=False)
        for i, ax in enumerate(axes.flat):
            ax.axis("off")
            if i < len(images):
                _show(ax, images[i])
                title_axes(ax, f"{names[truth[i]]} -> {names[predicted[i]]}", fontsize=8, color="#b00")
        if len(images) == 0:
            axes[0][0].text(0, 0.5, "none: every validation image is right", fontsize=9)
        subfig.suptitle(f"{group} (true -> predicted)", fontsize=10, fontweight="bold")
    return fig


def reliability_figure(calibration: dict, title: str) -> Figure:
    """The reliability diagram (Guo et al. 2017, Figure 1): accuracy against mean confidence per filled confidence
    bin, before and after the temperature, with the diagonal a calibrated model follows."""
    fig = Figure(figsize=(4.6, 4.2))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="#999999", linestyle="--", linewidth=1, label="calibrated")
    for key, label, color in (("reliability_before", "before", "#d62728"), ("reliability_after", "after", "#1f77b4")):
        bins = calibration[key]
        filled = [i for i, n in enumerate(bins["counts"]) if n > 0]
        ece = calibration["ece_before" if key.endswith("before") else "ece_after"]
        name = f"{label}: ECE {ece:.3f}" + (f", T = {calibration['temperature']:.2f}" if label == "after" else "")
        ax.plot([bins["confidence"][i] for i in filled], [bins["accuracy"][i] for i in filled], marker="o",
                color=color, label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (mean of the bin)")
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    title_axes(ax, title, fontsize=10)
    tight(fig)
    return fig

"""The seed articles' pictures: curves per phase, training-time bars, sample images. Drawn from results alone."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # Figure objects, not pyplot: no global state, no display needed

from ..atomic import write_atomic

PHASE_COLORS = {"source": "#1f77b4", "transfer": "#2ca02c", "scratch": "#d62728"}


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
            ax.set_title(f"{name} ({', '.join(phase['classes'])}): {metric}", fontsize=10)
            ax.set_xlabel("epoch")
            ax.set_ylabel(metric)
            ax.set_xticks(epochs)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    _tight(fig)
    return fig


def time_figure(phases: dict[str, dict]) -> Figure:
    """Training time per phase, as the seeds compare them, with test accuracy on each bar."""
    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    names = list(phases)
    seconds = [phases[n]["train_seconds"] for n in names]
    bars = ax.bar(names, seconds, color=[PHASE_COLORS.get(n, "gray") for n in names])
    for bar, n in zip(bars, names):
        ax.annotate(f"{phases[n]['train_seconds']:.1f} s\nacc {phases[n]['test_accuracy']:.4f}",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("training time (s)")
    ax.set_title("Training time per phase")
    ax.set_ylim(0, max(seconds) * 1.3 if seconds else 1)
    _tight(fig)
    return fig


def samples_figure(groups: dict[str, tuple[np.ndarray, np.ndarray, list[str]]], per_group: int = 16) -> Figure:
    """A grid of images per group (e.g. source and target classes), each titled with its class name."""
    cols = 8
    rows_per_group = -(-per_group // cols)
    fig = Figure(figsize=(cols * 1.1, rows_per_group * len(groups) * 1.3))
    axes = fig.subplots(rows_per_group * len(groups), cols, squeeze=False)
    for g, (group, (images, labels, names)) in enumerate(groups.items()):
        for i in range(rows_per_group * cols):
            ax = axes[g * rows_per_group + i // cols][i % cols]
            ax.axis("off")
            if i < min(per_group, len(images)):
                _show(ax, images[i])
                ax.set_title(f"{group}: {names[labels[i]]}", fontsize=7)
    _tight(fig)
    return fig


def save_figures(figures: dict[str, Figure], directory: Path) -> list[Path]:
    paths = []
    for name, fig in figures.items():
        path = directory / f"{name}.png"
        write_atomic(path, lambda tmp, fig=fig: _savefig(fig, tmp))
        paths.append(path)
    return paths


def _show(ax, img: np.ndarray) -> None:
    """A uint8 image (H, W), (H, W, 1) or (H, W, 3) at its true brightness."""
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)


def _savefig(fig: Figure, path: Path) -> None:
    with warnings.catch_warnings():
        # Class names in scripts the default font lacks (CJK, ...) draw as boxes; a warning per glyph is noise.
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig.savefig(path, dpi=100, format="png")


def _tight(fig: Figure) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig.tight_layout()


def confusion_figure(matrix: np.ndarray, class_names: list[str]) -> Figure:
    """Counts of true (rows) against predicted (columns) classes, with the names on both axes."""
    k = len(class_names)
    fig = Figure(figsize=(2 + 0.6 * k, 1.6 + 0.6 * k))
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    ax.set_title("Confusion matrix (validation)")
    _tight(fig)
    return fig


def misclassified_figure(images: np.ndarray, truth: np.ndarray, predicted: np.ndarray,
                         class_names: list[str]) -> Figure:
    """Validation images the model got wrong, titled 'true -> predicted'."""
    cols = 6
    rows = max(1, -(-len(images) // cols))
    fig = Figure(figsize=(cols * 1.6, rows * 1.8))
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(images):
            _show(ax, images[i])
            ax.set_title(f"{class_names[truth[i]]} -> {class_names[predicted[i]]}", fontsize=7, color="#b00")
    if len(images) == 0:
        axes[0][0].text(0, 0.5, "no misclassified images", fontsize=10)
    fig.suptitle("Misclassified validation images (true -> predicted)", fontsize=9)
    _tight(fig)
    return fig

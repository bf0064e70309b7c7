"""Predicted classes of a trained model and their confusion matrix, for the report."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .batches import batches_of
from .distributed import sum_over_ranks
from .loop import autocast, channels_last, inference_copy


@torch.inference_mode()
def logits_and_labels(model: nn.Module, x: torch.Tensor | Iterable, y: torch.Tensor | np.ndarray | None,
                      batch_size: int = 128, autocast_dtype: torch.dtype | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(logits as float32, true classes) of `x`: the labels are `y`, or those of a stream's batches. The logits
    give the predicted classes and, for calibration, the probabilities."""
    device = next(model.parameters()).device
    model = inference_copy(model)
    y = torch.as_tensor(y) if y is not None else None
    logits, truth = [], []
    for xb, yb in batches_of(x, y, batch_size, device):
        with autocast(autocast_dtype, device.type):
            logits.append(model(channels_last(xb)).float().cpu())
        truth.append(yb.cpu() if yb is not None else torch.zeros(0, dtype=torch.int64))
    if not logits:
        return np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.int64)
    return torch.cat(logits).numpy(), torch.cat(truth).numpy()


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, k: int) -> np.ndarray:
    """Counts of true class (rows) against predicted class (columns)."""
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(matrix, (np.asarray(truth, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return matrix


@dataclass(frozen=True)
class Mistakes:
    """What a trained model got wrong on the validation set: the confusion matrix and a few examples."""

    confusion: np.ndarray
    images: np.ndarray  # uint8, as shown to people, not as fed to the model
    truth: np.ndarray
    predicted: np.ndarray
    class_names: list[str]
    indices: np.ndarray  # of the examples in the whole validation set

    def figure_group(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """The (images, truth, predicted, names) that figures.misclassified_figure draws."""
        return self.images, self.truth, self.predicted, self.class_names

    def examples(self) -> list[dict]:
        """The examples as results.json keeps them, so a resumed run can draw a finished phase's again."""
        return [{"index": int(i), "true": int(t), "predicted": int(p)}
                for i, t, p in zip(self.indices, self.truth, self.predicted, strict=True)]

    @classmethod
    def from_examples(cls, examples: list[dict], confusion: list[list[int]],
                      images: Callable[[np.ndarray], np.ndarray], class_names: list[str]) -> Mistakes:
        """Mistakes as `examples()` recorded them; `images(indices)` reads the validation images again."""
        indices = np.array([e["index"] for e in examples], dtype=np.int64)
        return cls(np.asarray(confusion), images(indices), np.array([e["true"] for e in examples], dtype=np.int64),
                   np.array([e["predicted"] for e in examples], dtype=np.int64), list(class_names), indices)


def confusion_over_ranks(matrix: np.ndarray) -> np.ndarray:
    """Each rank's matrix (of its share of the validation images) summed: the matrix of the whole set."""
    return np.rint(sum_over_ranks(matrix.astype(np.float64).ravel().tolist())).astype(np.int64).reshape(matrix.shape)


def find_mistakes(predicted: np.ndarray, truth: np.ndarray, images: Callable[[np.ndarray], np.ndarray],
                  class_names: list[str], keep: int = 12, *,
                  index_of: Callable[[np.ndarray], np.ndarray] = np.asarray) -> Mistakes:
    """Count `predicted` against `truth` and keep the first `keep` wrong ones.

    `index_of(positions)` maps positions in the predictions to indices of the whole validation set (a rank's
    share, a stream's readable files; by default the same), and `images(indices)` gives those images as people
    see them, so only the few shown are read (or decoded) again."""
    wrong = np.flatnonzero(predicted != truth)[:keep]
    indices = np.asarray(index_of(wrong), dtype=np.int64)
    return Mistakes(confusion_matrix(truth, predicted, len(class_names)), images(indices), truth[wrong],
                    predicted[wrong], list(class_names), indices)

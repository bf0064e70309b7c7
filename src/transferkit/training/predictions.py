"""Predicted classes of a trained model and their confusion matrix, for the report."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .distributed import sum_over_ranks
from .loop import autocast, channels_last, inference_copy


@torch.inference_mode()
def predict_classes(model: nn.Module, x: torch.Tensor, batch_size: int = 128,
                    autocast_dtype: torch.dtype | None = None) -> np.ndarray:
    """The arg-max class of every row of `x`, computed as `evaluate` computes (eval mode, channels-last), on
    the device the model is on."""
    device = next(model.parameters()).device
    model = inference_copy(model)
    out = []
    for start in range(0, len(x), batch_size):
        with autocast(autocast_dtype, device.type):
            out.append(model(channels_last(x[start : start + batch_size].to(device))).argmax(1).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


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

    def figure_group(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """The (images, truth, predicted, names) that figures.misclassified_figure draws."""
        return self.images, self.truth, self.predicted, self.class_names


def confusion_over_ranks(matrix: np.ndarray) -> np.ndarray:
    """Each rank's matrix (of its share of the validation images) summed: the matrix of the whole set."""
    return np.rint(sum_over_ranks(matrix.astype(np.float64).ravel().tolist())).astype(np.int64).reshape(matrix.shape)


def find_mistakes(model: nn.Module, x: torch.Tensor, y: np.ndarray, images: np.ndarray, class_names: list[str],
                  batch_size: int = 128, autocast_dtype: torch.dtype | None = None, keep: int = 12) -> Mistakes:
    """Predict `x` (the model's input for `images`), count against `y`, keep the first `keep` wrong images."""
    predicted = predict_classes(model, x, batch_size, autocast_dtype)
    wrong = np.flatnonzero(predicted != y)[:keep]
    return Mistakes(confusion_matrix(y, predicted, len(class_names)), images[wrong], y[wrong], predicted[wrong],
                    list(class_names))

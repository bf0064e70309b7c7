"""Test-time augmentation: a prediction from the mean of the softmax over an image's views, the original and its
mirror image, as fastai's `tta()` averages them. A class that a mirror does not change (a dog, a truck) is
seen twice; where the mirror changes the class (digits, text), TTA is not for that data.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from .batches import batches_of
from .loop import autocast, channels_last, inference_copy
from .metrics import class_metrics
from .predictions import confusion_matrix, confusion_over_ranks

TTA_VIEWS = ("original", "horizontal flip")


def mirrored(images: np.ndarray | torch.Tensor, width_axis: int) -> np.ndarray | torch.Tensor:
    """The images flipped left to right: NumPy NHWC (width axis 2) as predict decodes them, or NCHW tensors
    (width axis 3) as training holds them."""
    if isinstance(images, torch.Tensor):
        return images.flip(width_axis)
    return np.ascontiguousarray(np.flip(images, axis=width_axis))


@torch.inference_mode()
def tta_record(model: nn.Module, x: torch.Tensor | Iterable, y: torch.Tensor | None, num_classes: int,
               temperature: float | None, batch_size: int, autocast_dtype: torch.dtype | None,
               device: torch.device) -> dict:
    """Accuracy, balanced accuracy and macro-F1 of `model` (which takes uint8 NCHW images) on (x, y), from
    the original view alone and from the mean of the softmax over TTA_VIEWS, in one pass; over all ranks."""
    model = inference_copy(model)
    t = temperature or 1.0
    plain, augmented = np.zeros((2, num_classes, num_classes), dtype=np.int64)
    for xb, yb in batches_of(x, y, batch_size, device):
        with autocast(autocast_dtype, device.type):
            probabilities = [torch.softmax(model(channels_last(view)).float() / t, dim=1)
                             for view in (xb, mirrored(xb, 3))]
        truth = yb.cpu().numpy()
        plain += confusion_matrix(truth, probabilities[0].argmax(1).cpu().numpy(), num_classes)
        augmented += confusion_matrix(truth, torch.stack(probabilities).mean(0).argmax(1).cpu().numpy(), num_classes)

    def summary(matrix: np.ndarray) -> dict:
        matrix = confusion_over_ranks(matrix)
        metrics = class_metrics(matrix)
        return {"accuracy": float(np.trace(matrix) / max(matrix.sum(), 1)),
                "balanced_accuracy": metrics["balanced_accuracy"], "macro_f1": metrics["macro_f1"]}

    return {"views": list(TTA_VIEWS), "temperature": t, "without": summary(plain), "with": summary(augmented)}

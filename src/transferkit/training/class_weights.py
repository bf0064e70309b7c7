"""Class weights for the training loss (--class-weights): inverse frequency when the classes are imbalanced.

With 500 dogs and 10 trucks an unweighted loss is 98% about the other classes, and a model can ignore trucks
at little cost; weighting each class's images by N / (K * n_class) (scikit-learn's "balanced") makes every class
count as much as the others in the loss. Only training is weighted: validation loss stays the plain mean, so it
compares across runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import check_class_weights
from ..errors import UserError
from .metrics import IMBALANCE_RATIO, imbalanced


@dataclass(frozen=True)
class ClassWeights:
    """The weights a phase's loss uses (None: unweighted) and why, as the console and results.json say it."""

    weights: list[float] | None
    reason: str

    def tensor(self, device: torch.device) -> torch.Tensor | None:
        return None if self.weights is None else torch.tensor(self.weights, dtype=torch.float32, device=device)

    def to_dict(self) -> dict:
        return {"weights": self.weights, "reason": self.reason}


def choose_class_weights(mode: str, labels: np.ndarray, num_classes: int) -> ClassWeights:
    """`auto`: inverse-frequency weights when the largest class has more than twice the images of the smallest,
    else none; `none`: none."""
    check_class_weights(mode)
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    sizes = f"classes of {counts.min()} to {counts.max()} training images"
    if mode == "none":
        return ClassWeights(None, f"none (--class-weights none; {sizes})")
    if not imbalanced(counts):
        return ClassWeights(None, f"none ({sizes}: balanced within {IMBALANCE_RATIO:g}x)")
    if counts.min() == 0:
        raise UserError(f"--class-weights auto: a class has no training images ({sizes}); give every class "
                        "images or use --class-weights none")
    weights = len(labels) / (num_classes * counts)
    return ClassWeights([round(float(w), 6) for w in weights],
                        f"inverse frequency ({sizes}: more than {IMBALANCE_RATIO:g}x apart)")

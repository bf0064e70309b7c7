"""An image classification data set held in memory as uint8 arrays, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError


@dataclass(frozen=True)
class ArrayDataset:
    """Train and test images (N, H, W) or (N, H, W, C) uint8 with integer labels in [0, len(class_names))."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    origin: str  # where the arrays came from, named in error messages
    skipped: tuple[str, ...] = ()  # image files that failed to decode ("path: reason"), for folder data sets
    # What x_test is: "test", a test split (MNIST's, CIFAR-10's, a folder's test/), or "val", a validation split
    # (a folder's val/, or held out of its training images), which may choose an epoch.
    validation_split: str = "test"
    excluded: tuple[str, ...] = ()  # files of a folder data set left out (--exclude)

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            validate_images(x, f"x_{split}", self.origin)
            validate_labels(y, f"y_{split}", self.origin, num_classes=len(self.class_names))
            if len(x) != len(y):
                raise UserError(
                    f"{self.origin}: x_{split} has {len(x)} images but y_{split} has {len(y)} labels; they must match"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise UserError(
                f"{self.origin}: train images are {self.x_train.shape[1:]} but test images are "
                f"{self.x_test.shape[1:]}; both splits need the same image shape"
            )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) as the model sees it."""
        h, w = self.x_train.shape[1:3]
        c = 1 if self.x_train.ndim == 3 else self.x_train.shape[3]
        return (c, h, w)


def validate_images(x: object, key: str, origin: str) -> None:
    if not isinstance(x, np.ndarray):
        raise UserError(f"{origin}: {key} is not an array")
    if x.dtype != np.uint8:
        raise UserError(f"{origin}: {key} has dtype {x.dtype}; images must be uint8 (0-255)")
    if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[3] not in (1, 3)):
        raise UserError(
            f"{origin}: {key} has shape {x.shape}; expected (N, height, width) or (N, height, width, 1|3)"
        )
    if len(x) == 0:
        raise UserError(f"{origin}: {key} holds no images")


def validate_labels(y: object, key: str, origin: str, num_classes: int) -> None:
    if not isinstance(y, np.ndarray):
        raise UserError(f"{origin}: {key} is not an array")
    if y.ndim != 1:
        raise UserError(f"{origin}: {key} has shape {y.shape}; labels must be a flat (N,) array of class indices")
    if not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"{origin}: {key} has dtype {y.dtype}; labels must be integers")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise UserError(
            f"{origin}: {key} has labels from {y.min()} to {y.max()}; expected 0 to {num_classes - 1}"
        )

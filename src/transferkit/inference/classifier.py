"""What predict needs of a model, whatever runs it (PyTorch, ONNX Runtime, TorchScript): its class names, how
files are decoded for it, and the probabilities of a batch of decoded images."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..data.folders import decode_image


@dataclass(frozen=True)
class Classifier:
    """What predict needs of a model: its class names, how files are decoded for it, and the probabilities of a
    batch of decoded images, uint8 (N, H, W[, C]) -> (N, classes)."""

    class_names: list[str]
    size: tuple[int, int]  # (width, height) files are decoded to
    crop: tuple[int, int]  # (height, width) of the centre kept at once: an image costs crop, not resize, pixels
    channels: int
    cover: bool  # keep the aspect ratio and crop the centre (backbones), or stretch (the seed network)
    probabilities: Callable[[np.ndarray], np.ndarray]

    def decode(self, data: bytes) -> np.ndarray:
        return self.decode_views(data, mirror=False)[0]

    def decode_views(self, data: bytes, mirror: bool) -> tuple[np.ndarray, ...]:
        """The image for the model and, with `mirror`, its mirror image prepared the same way (mirrored before
        the crop, as a mirrored file would be: a centre crop of an odd margin is not symmetric)."""
        decoded = decode_image(data, self.size, self.channels, self.cover)
        views = (decoded, np.flip(decoded, axis=1)) if mirror else (decoded,)
        return tuple(centre_crop(v, *self.crop) for v in views)


def centre_crop(images: np.ndarray, height: int, width: int, rows: int = 0) -> np.ndarray:
    """The centre (height, width) of an image (H, W[, C]; `rows` 0) or a batch (N, H, W[, C]; `rows` 1), with
    torchvision's CenterCrop arithmetic, as an array of its own (the larger decode is freed)."""
    top = int(round((images.shape[rows] - height) / 2.0))
    left = int(round((images.shape[rows + 1] - width) / 2.0))
    index = (slice(None),) * rows + (slice(top, top + height), slice(left, left + width))
    return np.ascontiguousarray(images[index])

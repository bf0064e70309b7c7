"""Turning uint8 images into what a model eats, as its saved preprocessing record says."""

from __future__ import annotations

import torch
from torch import nn


class InputTransform(nn.Module):
    """uint8 NCHW batch (or float in [0, 1]) -> normalised float batch; random crops and flips per image in
    training mode.

    Put in front of a model, it lets the plain training loop feed uint8 tensors held in memory (4x less than
    float) and augment on the fly, while evaluation centre-crops.
    """

    def __init__(self, crop: int, mean: tuple[float, ...], std: tuple[float, ...], augment: bool = False,
                 vertical_flip: bool = False, min_scale: float = 0.5, resize: int | None = None):
        super().__init__()
        # Imported here: torchvision takes ~2 s to import (it loads torch._dynamo), and the seed network's
        # runs, which are most runs and every quick error, never need it.
        from torchvision.transforms import v2

        # `resize`: scale whole images to this square size first (small images such as CIFAR's 32 px, kept
        # small in memory and enlarged per batch for a backbone trained at 224 px).
        self.crop, self.augment, self.resize = crop, augment, resize
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        flips = [v2.RandomHorizontalFlip()] + ([v2.RandomVerticalFlip()] if vertical_flip else [])
        self.random = v2.Compose([v2.RandomResizedCrop(crop, scale=(min_scale, 1.0), antialias=True), *flips])
        self.centre = v2.CenterCrop(crop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resize is not None and tuple(x.shape[-2:]) != (self.resize, self.resize):
            from torchvision.transforms.v2.functional import resize  # loaded by __init__ already

            x = resize(x, [self.resize, self.resize], antialias=True)
        if self.training and self.augment:
            x = torch.stack([self.random(img) for img in x])
        else:
            x = self.centre(x)
        # uint8 pixels are scaled here; float images are taken as already in [0, 1] (scaling them twice would
        # leave a frozen network nothing but near-constant inputs).
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        return (x - self.mean) / self.std


def scale_images(x: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW -> float in [0, 1], the seed network's preprocessing."""
    return x.float() / 255.0

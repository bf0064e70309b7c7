"""The network of the seed documents: `features` (two convs, a pool) and `classifier` (two dense layers)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import UserError
from .layers import FastDropout


class SeedCNN(nn.Module):
    """Conv(f, k) ReLU Conv(f, k) ReLU MaxPool Dropout Flatten | Dense(units) ReLU Dropout Dense(classes).

    Softmax is left to the loss. Weights start as Keras' defaults do (Glorot-uniform, zero biases),
    which is part of reproducing the seeds' numbers.
    """

    def __init__(self, config: ModelConfig, in_channels: int, image_size: tuple[int, int], num_classes: int):
        super().__init__()
        self.config = config
        self.in_channels = in_channels
        self.image_size = tuple(image_size)
        k, p = config.kernel_size, config.pool_size
        h, w = (s - 2 * (k - 1) for s in image_size)  # two 'valid' convolutions
        if h < p or w < p:
            raise UserError(
                f"images of {image_size[0]}x{image_size[1]} are too small for two {k}x{k} convolutions "
                f"and a {p}x{p} pool; use a smaller --kernel-size or --pool-size"
            )
        flat = config.filters * (h // p) * (w // p)
        self.features = nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(in_channels, config.filters, k),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(config.filters, config.filters, k),
            relu2=nn.ReLU(),
            pool=nn.MaxPool2d(p),
            dropout=FastDropout(config.feature_dropout),
            flatten=nn.Flatten(),
        ))
        self.classifier = self._make_classifier(flat, num_classes)
        self.apply(keras_init)

    def _make_classifier(self, in_features: int, num_classes: int) -> nn.Sequential:
        c = self.config
        return nn.Sequential(OrderedDict(
            dense1=nn.Linear(in_features, c.dense_units),
            relu=nn.ReLU(),
            dropout=FastDropout(c.classifier_dropout),
            dense2=nn.Linear(c.dense_units, num_classes),
        ))

    @property
    def num_classes(self) -> int:
        return self.classifier.dense2.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one for `num_classes` classes."""
        self.classifier = self._make_classifier(self.classifier.dense1.in_features, num_classes)
        self.classifier.apply(keras_init)

    def spec(self) -> dict:
        """What it takes to rebuild this network without the code's defaults (saved beside the weights)."""
        return {
            "architecture": "seed_cnn",
            "model_config": asdict(self.config),
            "in_channels": self.in_channels,
            "image_size": list(self.image_size),
            "num_classes": self.num_classes,
        }

    @classmethod
    def from_spec(cls, spec: dict) -> SeedCNN:
        return cls(ModelConfig(**spec["model_config"]), spec["in_channels"], tuple(spec["image_size"]),
                   spec["num_classes"])


def keras_init(module: nn.Module) -> None:
    """Keras' default initialisation: Glorot-uniform kernels and zero biases."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.xavier_uniform_(module.weight)  # fans as Keras computes them: (in|out) channels * kernel area
        nn.init.zeros_(module.bias)

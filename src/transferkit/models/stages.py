"""A backbone's stages: consecutive pieces whose outputs are feature maps of growing depth, each averaged over
its positions into one vector (for `transferkit rank --layers`)."""

from __future__ import annotations

import torch
from torch import nn

from .registry import architecture


def stage_pieces(backbone: str, features: nn.Module) -> list[tuple[str, nn.Module, bool]]:
    """(name, module, scored) in order: running them one after another gives the backbone's last feature map;
    a scored piece's output is a stage; the names are the backbone's record's stages (registry.py). timm's
    EfficientNet-Lite: the stem, blocks.0-6, the 1x1 head conv; torchvision's ResNets: the stem, layer1-4;
    torchvision's other models: each child of `features`."""
    family = architecture(backbone).family
    if family == "lite":
        return ([("stem", nn.Sequential(features.conv_stem, features.bn1), False)]
                + [(f"blocks.{i}", block, True) for i, block in enumerate(features.blocks)]
                + [("head", nn.Sequential(features.conv_head, features.bn2), True)])
    if family == "resnet":
        stem = nn.Sequential(features.conv1, features.bn1, features.relu, features.maxpool)
        return [("stem", stem, False)] + [(f"layer{i}", getattr(features, f"layer{i}"), True) for i in range(1, 5)]
    # "sequential": MobileNetV3, EfficientNet-B0, ConvNeXt
    return [(f"features.{name}", child, True) for name, child in features.features.named_children()]


class PooledStages(nn.Module):
    """The backbone run stage by stage; returns every stage's output averaged over positions, side by side
    (`widths` gives each one's share of the columns)."""

    def __init__(self, pieces: list[tuple[str, nn.Module, bool]], widths: list[int]):
        super().__init__()
        self.pieces = nn.ModuleList(module for _, module, _ in pieces)
        self.scored = [scored for _, _, scored in pieces]
        self.names = [name for name, _, scored in pieces if scored]
        self.widths = widths

    @classmethod
    def of(cls, backbone: str, features: nn.Module, size: int) -> PooledStages:
        """The stages of `features`, their widths found by running one image of `size` px."""
        pieces = stage_pieces(backbone, features)
        x, widths = torch.zeros(1, 3, size, size), []
        with torch.no_grad():
            for _, module, scored in pieces:
                x = module.eval()(x)
                if scored:
                    widths.append(x.shape[1])
        return cls(pieces, widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = []
        for module, scored in zip(self.pieces, self.scored, strict=True):
            x = module(x)
            if scored:
                pooled.append(x.float().mean((2, 3)))
        return torch.cat(pooled, 1)

    def split(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """The columns of each stage, by name."""
        return dict(zip(self.names, features.split(self.widths, dim=1), strict=True))

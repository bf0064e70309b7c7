"""Freezing a part of a model: no gradients, not in the optimizer, normalisation statistics fixed."""

from __future__ import annotations

from torch import nn

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def freeze(module: nn.Module) -> None:
    """Stop `module` from learning: its parameters get no gradients and its BatchNorm stays in eval mode."""
    module.requires_grad_(False)
    module.eval()


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters an optimizer should hold: those still requiring gradients."""
    return [p for p in model.parameters() if p.requires_grad]


def train_mode(model: nn.Module) -> None:
    """model.train(), except that normalisation layers with frozen parameters keep their running statistics."""
    model.train()
    for m in model.modules():
        params = list(m.parameters(recurse=False))
        if isinstance(m, NORM_TYPES) and params and not any(p.requires_grad for p in params):
            m.eval()

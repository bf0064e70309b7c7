"""Freezing a part of a model: no gradients, not in the optimizer, normalisation statistics fixed."""

from __future__ import annotations

from torch import nn

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def freeze(module: nn.Module, eval_mode: bool = False) -> None:
    """Stop `module` from learning: its parameters get no gradients and its BatchNorm stays in eval mode.

    With `eval_mode`, the whole module stays in eval mode while the rest trains (dropout and stochastic
    depth off), as a pretrained backbone should; without, its Dropout still acts, as in Keras' trainable=False.
    """
    module.requires_grad_(False)
    module.eval()
    module.frozen_eval = eval_mode


def unfreeze(module: nn.Module, reestimate_batchnorm: bool = False) -> None:
    """Undo freeze: gradients again, and training mode follows the model's.

    BatchNorm layers keep their running statistics (eval mode, scale and shift still trained) unless
    `reestimate_batchnorm`: re-estimating them from small batches of a new, small data set costs accuracy
    (bench/cifar_imagenet.py: 0.861 against 0.922 after one epoch), which is why the Keras guide keeps them.
    """
    module.requires_grad_(True)
    for m in module.modules():
        m.frozen_eval = isinstance(m, nn.modules.batchnorm._BatchNorm) and not reestimate_batchnorm


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters an optimizer should hold: those still requiring gradients."""
    return [p for p in model.parameters() if p.requires_grad]


def train_mode(model: nn.Module) -> None:
    """model.train(), except that normalisation layers with frozen parameters keep their running statistics."""
    model.train()
    for m in model.modules():
        if getattr(m, "frozen_eval", False):
            m.eval()
        params = list(m.parameters(recurse=False))
        if isinstance(m, NORM_TYPES) and params and not any(p.requires_grad for p in params):
            m.eval()

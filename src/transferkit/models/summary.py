"""A Keras-style parameter summary: layer, output shape, parameters, trainable."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LayerRow:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    trainable: bool

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "output_shape": list(self.output_shape),
                "params": self.params, "trainable": self.trainable}

    @classmethod
    def from_dict(cls, d: dict) -> LayerRow:
        return cls(d["name"], d["kind"], tuple(d["output_shape"]), d["params"], d["trainable"])


@dataclass(frozen=True)
class ParamCounts:
    total: int
    trainable: int
    non_trainable: int

    def to_dict(self) -> dict:
        return {"total": self.total, "trainable": self.trainable, "non_trainable": self.non_trainable}


def count_params(model: nn.Module) -> ParamCounts:
    """Total, trainable (requires_grad) and non-trainable parameter counts, as model.summary() reports them."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return ParamCounts(total, trainable, total - trainable)


def layer_rows(model: nn.Module, input_shape: tuple[int, ...], max_depth: int | None = None) -> list[LayerRow]:
    """One row per leaf layer, with output shapes found by running one zero image through the model.

    `max_depth` stops at modules that deep (`features.blocks` for 2), so a pretrained backbone's hundreds of
    layers read as its stages.
    """
    shapes: dict[str, tuple[int, ...]] = {}

    def shown(name: str, module: nn.Module) -> bool:
        depth = name.count(".") + 1
        return bool(name) and (not list(module.children()) or depth == max_depth) and (
            max_depth is None or depth <= max_depth)

    leaves = [(n, m) for n, m in model.named_modules() if shown(n, m)]
    hooks = [m.register_forward_hook(_recorder(shapes, n)) for n, m in leaves]
    # Each module's own mode, restored one by one: model.train() would wake a frozen backbone kept in eval mode.
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=next(model.parameters()).device))
    finally:
        for m, training in modes.items():
            m.training = training
        for h in hooks:
            h.remove()
    rows = []
    for name, module in leaves:
        params = list(module.parameters())
        rows.append(LayerRow(
            name=name,
            kind=type(module).__name__,
            output_shape=shapes.get(name, ()),
            params=sum(p.numel() for p in params),
            trainable=bool(params) and all(p.requires_grad for p in params),
        ))
    return rows


def _recorder(shapes: dict, name: str):
    def hook(_module, _inputs, output):
        shapes[name] = tuple(output.shape[1:])

    return hook

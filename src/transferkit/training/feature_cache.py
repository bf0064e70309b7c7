"""Features of a frozen network part, computed once and reused for every epoch of the classifier."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .loop import autocast, channels_last, inference_copy

# Layers without parameters that may follow the frozen computation; they are re-applied on the cached
# tensor during training, so a Dropout stays random per epoch as it would when recomputing.
PARAMETER_FREE_TAIL = (nn.Dropout, nn.Flatten, nn.Identity)


def split_frozen(features: nn.Sequential) -> tuple[nn.Sequential, nn.Sequential]:
    """Cut `features` into a deterministic prefix (cached) and a parameter-free tail (applied per batch)."""
    layers = list(features.named_children())
    cut = len(layers)
    while cut > 0 and isinstance(layers[cut - 1][1], PARAMETER_FREE_TAIL):
        cut -= 1
    return nn.Sequential(OrderedDict(layers[:cut])), nn.Sequential(OrderedDict(layers[cut:]))


# no_grad, not inference_mode: the result is later an input of training, which inference tensors cannot be.
@torch.no_grad()
def compute_features(prefix: nn.Module, x: torch.Tensor, batch_size: int = 128,
                     autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Run the frozen `prefix` in eval mode over `x`; the float32 result (NCHW) is kept in memory."""
    prefix = inference_copy(prefix)
    out = None
    for start in range(0, len(x), batch_size):
        with autocast(autocast_dtype):
            y = prefix(channels_last(x[start : start + batch_size])).float()
        if out is None:
            out = torch.empty((len(x), *y.shape[1:]), dtype=torch.float32)
        out[start : start + len(y)] = y
    return out

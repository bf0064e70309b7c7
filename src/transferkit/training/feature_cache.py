"""Features of a frozen network part, computed once and reused for every epoch of the classifier."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..atomic import write_atomic
from ..errors import UserError
from .batches import batches_of
from .fusion import fold_batchnorm
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
def compute_features(prefix: nn.Module, x: torch.Tensor | Iterable, batch_size: int = 128,
                     autocast_dtype: torch.dtype | None = None,
                     progress: Callable[[int, int], None] | None = None, *,
                     device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """Run the frozen `prefix` (on `device`) in eval mode over `x`; the float32 result (NCHW) is kept in host
    memory. In a distributed run each rank passes its own shard. `x` may instead be an iterable of (x, y)
    batches (images streamed from disk): each image passes once, and only the small features are kept.

    `progress(done, total)` is called after every batch (a pretrained backbone's pass can take minutes).
    """
    prefix = inference_copy(prefix)
    out, done = None, 0
    for xb, _ in batches_of(x, None, batch_size, device):
        if out is None:  # the first batch: fold BatchNorm into the convolutions, checked on two images
            prefix = fold_batchnorm(prefix, channels_last(xb[:2]))
        with autocast(autocast_dtype, device.type):
            y = prefix(channels_last(xb)).float().cpu()
        if out is None:  # for all of len(x); a stream's unreadable files leave the end unused
            out = torch.empty((len(x), *y.shape[1:]), dtype=torch.float32)
        out[done : done + len(y)] = y
        done += len(y)
        if progress is not None:
            progress(done, len(x))
    return out[:done] if out is not None else out


def stored_features(prefix: nn.Module, x: torch.Tensor, identity: str, store: Path, batch_size: int = 128,
                    autocast_dtype: torch.dtype | None = None,
                    progress: Callable[[int, int], None] | None = None, *,
                    device: torch.device = torch.device("cpu")) -> tuple[torch.Tensor, bool]:
    """compute_features, kept on disk in `store` so that the same images through the same frozen network are
    computed once: the key is `identity` (which network, weights, preprocessing, precision) and the images'
    bytes. Returns (features, whether they came from the store)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{identity}|{torch.__version__}|{tuple(x.shape)}|{x.dtype}".encode())
    digest.update(x.contiguous().numpy().data)
    path = store / f"{digest.hexdigest()}.safetensors"
    if path.is_file():
        try:
            # A copy in freshly allocated (aligned) memory: read in place, BLAS summed the rows in another
            # order and the losses differed from the computing run's in the 7th digit.
            return load_file(str(path))["features"].clone(), True
        except Exception:  # noqa: BLE001 - a damaged file is recomputed and replaced
            pass
    features = compute_features(prefix, x, batch_size, autocast_dtype, progress, device=device)
    try:
        store.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda tmp: save_file({"features": features}, str(tmp), metadata={"identity": identity}))
    except (OSError, UserError):  # a full or read-only cache costs the next run a pass, not this run its work
        pass
    return features, False

"""The frozen backbone's pass over a run's images, shared by `run --backbone` and `finetune`: features read
from the on-disk store when the same images went through the same network before, else computed (with a
progress bar: minutes on a CPU) and stored."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..models.backbones import Preprocessing
from ..paths import cache_dir
from ..reporting.console import feature_pass_progress
from ..training import Precision
from ..training.feature_cache import compute_features, stored_features
from ..training.fusion import fold_batchnorm
from ..training.loop import autocast, inference_copy
from .runtime import Runtime


def backbone_identity(name: str, features: nn.Module, preprocessing: Preprocessing, precision: Precision) -> str:
    """What determines the frozen features besides the images: network, its weights, input, precision."""
    digest = hashlib.blake2b(digest_size=16)
    for key, tensor in features.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().data)
    return f"{name}|{digest.hexdigest()}|{preprocessing}|{precision.name}"


def frozen_features(name: str, prefix: nn.Module, images: list[torch.Tensor | Iterable], identity: str,
                    input_size: int, runtime: Runtime) -> tuple[list[torch.Tensor], dict]:
    """The features of each of `images` through the frozen `prefix` (eval mode; `input_size` is what the
    network sees after the prefix's resizing), and a record of the pass for results.json.

    Tensors go through the feature store; a stream of batches (images decoded from disk) is computed, since
    the store keys on the decoded images.
    """
    console, batch_size, autocast_dtype, device = (runtime.console, runtime.eval_batch_size, runtime.autocast_dtype,
                                                   runtime.device)
    start = time.perf_counter()
    with feature_pass_progress(console, sum(len(x) for x in images)) as advance:
        passes, before = [], 0
        for x in images:
            # This set's images count after the sets before it, even where a stream skipped some.
            done = lambda n, _of, before=before: advance(before + n)  # noqa: E731
            before += len(x)
            passes.append(stored_features(prefix, x, identity, cache_dir() / "features", batch_size,
                                          autocast_dtype, done, device=device) if isinstance(x, torch.Tensor)
                          else (compute_features(prefix, x, batch_size, autocast_dtype, done, device=device), False))
    seconds = time.perf_counter() - start
    computed = sum(len(x) for x, (_, hit) in zip(images, passes, strict=True) if not hit)
    record = {"images": sum(len(x) for x in images), "computed": computed, "seconds": round(seconds, 3),
              "from_store": computed == 0,
              "images_per_second": round(computed / seconds, 2) if computed else None,
              "input_size": input_size}
    how = "read from the feature store" if computed == 0 else f"{computed} computed at {computed / seconds:.1f} images/s"
    features = [f for f, _ in passes]
    console.print(f"frozen {name} features {tuple(features[0].shape[1:])} for "
                  f"{' + '.join(str(len(x)) for x in images)} images {how} ({seconds:.1f}s)")
    return features, record


def fast_forward(model: nn.Module, precision: Precision) -> Callable[[torch.Tensor], torch.Tensor]:
    """The feature pass's fast path (compute_features) for any forward-only network on the CPU: an eval,
    channels-last copy with BatchNorm folded into the convolutions (checked on the first batch), run under
    inference_mode and autocast at `precision`. Returns the function batch -> float32 output; an NCHW batch
    should come channels-last (as a permuted NHWC one does)."""
    model = inference_copy(model).requires_grad_(False)
    folded = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if not folded:  # on the first batch: which norm follows which convolution is seen by running it
                fold_batchnorm(model, x[:2])
                folded.append(True)
            with autocast(precision.autocast_dtype):
                return model(x).float()

    return forward

"""Batches cut from tensors already in memory: no DataLoader, no per-sample Python."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


def images_to_tensor(x: np.ndarray, scale: bool = True) -> torch.Tensor:
    """uint8 (N, H, W[, C]) -> float32 (N, C, H, W) scaled to [0, 1], as the seeds preprocess; with
    `scale=False` uint8 (N, C, H, W), for a model that normalises its input itself (4x less memory)."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    if t.ndim == 3:
        t = t.unsqueeze(1)
    else:
        t = t.permute(0, 3, 1, 2)
    return t.float().div_(255.0).contiguous() if scale else t.contiguous()


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`t` on `device`: through pinned memory and a non-blocking copy to a GPU; unchanged on the CPU."""
    if device.type == "cpu":
        return t
    return t.pin_memory().to(device, non_blocking=True)


class TensorBatches:
    """Shuffled mini-batches of (x, y), in a new order each epoch drawn from a seeded generator.

    Its state (generator, the epoch's order, the position in it) can be saved and restored, so an epoch
    stopped half-way continues with the same batches. The tensors stay in host memory; on a GPU each batch
    is copied from pinned memory without blocking, so the copy overlaps the previous step's kernels.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int,
                 device: torch.device = torch.device("cpu")):
        self.x, self.y, self.batch_size, self.device = x, y, batch_size, torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        self.order: torch.Tensor | None = None  # this epoch's permutation, while an epoch is under way
        self.position = 0  # batches of this epoch already handed out

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.order is None:
            self.order, self.position = torch.randperm(len(self.x), generator=self.generator), 0
        while self.position < len(self):
            idx = self.order[self.position * self.batch_size : (self.position + 1) * self.batch_size]
            self.position += 1
            yield to_device(self.x[idx], self.device), to_device(self.y[idx], self.device)
        self.order, self.position = None, 0

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {"batches.generator": self.generator.get_state()}
        if self.order is not None:
            tensors["batches.order"] = self.order
        return tensors, {"position": self.position}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        self.generator.set_state(tensors["batches.generator"])
        self.order = tensors.get("batches.order")
        self.position = meta["position"] if self.order is not None else 0

"""Batches cut from tensors already in memory: no DataLoader, no per-sample Python."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


def images_to_tensor(x: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W[, C]) -> float32 (N, C, H, W) scaled to [0, 1], as the seeds preprocess."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    if t.ndim == 3:
        t = t.unsqueeze(1)
    else:
        t = t.permute(0, 3, 1, 2)
    return t.float().div_(255.0).contiguous()


class TensorBatches:
    """Shuffled mini-batches of (x, y) in a new order each epoch, drawn from a seeded generator."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.x), generator=self.generator)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            yield self.x[idx], self.y[idx]

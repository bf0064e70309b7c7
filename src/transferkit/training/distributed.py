"""Data-parallel training across processes with torch.distributed, in processes that torchrun starts.

torchrun gives each process RANK, WORLD_SIZE and LOCAL_RANK; without them (or with a world of one) a run is
a single process and nothing here changes what it computes. Each rank trains DistributedDataParallel on its
own shard of the in-memory training tensors; DDP averages the gradients, so every rank holds the same
model. The collective helpers below act on torch's default process group and are identities where there is
none, as the helpers of torchvision's reference scripts are.
"""

from __future__ import annotations

import atexit
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run: its rank among `world_size` processes and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None  # gloo (CPU) or nccl (GPU) when there are several processes

    @property
    def is_main(self) -> bool:
        """Rank 0 alone prints and writes the run folder."""
        return self.rank == 0

    def wrap(self, module: nn.Module) -> nn.Module:
        """`module` under DistributedDataParallel when there are several processes (its gradients averaged)."""
        if self.world_size == 1:
            return module
        return DistributedDataParallel(module, device_ids=[self.device] if self.device.type == "cuda" else None)

    def training_shard(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of the training samples, as DistributedSampler deals them out.

        A permutation seeded by `seed` (the same on every rank) is dealt out in turn; its first samples are
        repeated at the end so that every rank gets as many and all take the same number of steps, which
        DDP needs. The shard stays fixed, so a feature cache covers it; TensorBatches reshuffles it each epoch.
        """
        if self.world_size == 1:
            return x, y
        n = len(x)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        padded = -(-n // self.world_size) * self.world_size
        order = order.repeat(-(-padded // n))[:padded]
        idx = order[self.rank :: self.world_size]
        return x[idx], y[idx]

    def evaluation_shard(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every world_size-th sample from this rank's: the shards cover each sample once, so sums over ranks
        are those of the whole set."""
        if self.world_size == 1:
            return x, y
        return x[self.rank :: self.world_size], y[self.rank :: self.world_size]

    def evaluation_indices(self, positions: np.ndarray) -> np.ndarray:
        """Where positions in this rank's evaluation shard sit in the whole set (evaluation_shard undone)."""
        return positions * self.world_size + self.rank

    def describe(self, batch_size: int, learning_rate: float) -> dict:
        """What results.json states: the world, the batch per rank and in all, the (unscaled) learning rate."""
        return {"world_size": self.world_size, "backend": self.backend, "device": str(self.device),
                "batch_size_per_rank": batch_size, "global_batch_size": batch_size * self.world_size,
                "learning_rate": learning_rate}


def resolve_device(requested: str, local_rank: int = 0, local_world_size: int = 1) -> torch.device:
    """The device for --device `requested`; a GPU that is not there is an error naming the option."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", requested)
    if match is None:
        raise UserError(f"--device must be auto, cpu, cuda or cuda:N; got {requested!r}")
    if not torch.cuda.is_available():
        raise UserError(f"--device {requested}: PyTorch sees no CUDA GPU here; use --device cpu (or auto)")
    if match.group(1) is not None and local_world_size > 1:
        raise UserError(f"--device {requested}: under torchrun each process takes the GPU of its local rank; "
                        "give --device cuda")
    index = int(match.group(1)) if match.group(1) is not None else local_rank
    if index >= torch.cuda.device_count():
        raise UserError(f"--device cuda:{index}: only {torch.cuda.device_count()} GPU(s) visible here")
    return torch.device("cuda", index)


def init_distributed(device: str = "auto") -> Distributed:
    """Join the process group torchrun set up (gloo on CPUs, NCCL on GPUs), or stay a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed(device=resolve_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    chosen = resolve_device(device, local_rank, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    backend = "nccl" if chosen.type == "cuda" else "gloo"
    if not dist.is_initialized():
        if chosen.type == "cuda":
            torch.cuda.set_device(chosen)
        dist.init_process_group(backend, device_id=chosen if chosen.type == "cuda" else None)
        atexit.register(_leave)
    return Distributed(rank, world_size, local_rank, chosen, dist.get_backend())


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _collective_device() -> torch.device:
    """NCCL reduces tensors on the GPU, gloo on the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def sum_over_ranks(values: list[float]) -> list[float]:
    """Each value summed over all ranks (float64); unchanged in a single process."""
    if not _active():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on one, so that all ranks stop after the same step."""
    if not _active():
        return flag
    t = torch.tensor([int(flag)], device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_to_main(value: object) -> list[object]:
    """Every rank's `value` on rank 0, in rank order (JSON-like values; empty on the other ranks); [value]
    in a single process."""
    if not _active():
        return [value]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(value, out, dst=0)
    return out or []


def gather_everywhere(value: object) -> list[object]:
    """Every rank's `value` on every rank, in rank order; [value] in a single process."""
    if not _active():
        return [value]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def broadcast_from_main(value: object) -> object:
    """Rank 0's `value` on every rank."""
    if not _active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[[], T]) -> T:
    """`fn()` run by rank 0 alone (such as creating the run folder); every rank gets its result, or raises
    the UserError it raised, so a mistake stops every rank with the same one line."""
    outcome = None
    if current_rank() == 0:
        try:
            outcome = (fn(), None)
        except UserError as e:
            outcome = (None, str(e))
    value, error = broadcast_from_main(outcome)
    if error is not None:
        raise UserError(error)
    return value


def current_rank() -> int:
    return dist.get_rank() if _active() else 0


def unwrap(module: nn.Module) -> nn.Module:
    """The module DDP wraps (for evaluation and saving), or `module` itself."""
    return module.module if isinstance(module, DistributedDataParallel) else module

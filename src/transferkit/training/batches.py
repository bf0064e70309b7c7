"""Training batches: cut from tensors already in memory (no DataLoader, no per-sample Python), or decoded
from disk by DataLoader workers when the images do not fit in memory."""

from __future__ import annotations

import os
import signal
import warnings
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import UserError


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


class ShuffledBatches:
    """A new order each epoch drawn from a seeded generator, and where the epoch is in it.

    Its state (generator, the epoch's order, the position in it) can be saved and restored, so an epoch
    stopped half-way continues with the same batches. Subclasses say how a batch of indices is fetched.
    """

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device = torch.device("cpu"),
                 min_steps: int = 0):
        self.n, self.batch_size, self.device = n, batch_size, torch.device(device)
        self.min_steps = min_steps  # an epoch of fewer batches takes that many, from further shuffles
        self.generator = torch.Generator().manual_seed(seed)
        self.order: torch.Tensor | None = None  # this epoch's permutation, while an epoch is under way
        self.position = 0  # batches of this epoch already handed out

    def __len__(self) -> int:
        return max(-(-self.n // self.batch_size), self.min_steps)

    def remaining(self) -> list[torch.Tensor]:
        """The index batches of this epoch not yet handed out (drawing the epoch's order if it starts now)."""
        if self.order is None:
            # Once through the data; a few images stretched to min_steps batches pass as many times as it takes.
            passes = -(-len(self) * self.batch_size // self.n) if len(self) > -(-self.n // self.batch_size) else 1
            self.order = torch.cat([torch.randperm(self.n, generator=self.generator) for _ in range(passes)])
            self.position = 0
        return [self.order[i * self.batch_size : (i + 1) * self.batch_size] for i in range(self.position, len(self))]

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {"batches.generator": self.generator.get_state()}
        if self.order is not None:
            tensors["batches.order"] = self.order
        return tensors, {"position": self.position}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        self.generator.set_state(tensors["batches.generator"])
        self.order = tensors.get("batches.order")
        self.position = meta["position"] if self.order is not None else 0


class TensorBatches(ShuffledBatches):
    """Shuffled mini-batches of (x, y) from tensors in host memory; on a GPU each batch is copied from pinned
    memory without blocking, so the copy overlaps the previous step's kernels."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int,
                 device: torch.device = torch.device("cpu"), min_steps: int = 0):
        super().__init__(len(x), batch_size, seed, device, min_steps)
        self.x, self.y = x, y

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for idx in self.remaining():
            self.position += 1
            yield to_device(self.x[idx], self.device), to_device(self.y[idx], self.device)
        self.order, self.position = None, 0


def usable_cores() -> int:
    """The cores this process may run on (its affinity, which containers and taskset narrow), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def worker_count(requested: int | None, option: str = "--workers", least: int = 0, what: str = "workers") -> int:
    """Processes for --workers (DataLoader workers; 0 decodes in this process) or a study's --jobs (`least` 1):
    by default one per usable core. More than the usable cores buys nothing and costs about 0.5 GB each:
    capped there, with a warning, never forked."""
    cores = usable_cores()
    if requested is None:
        return cores
    if requested < least:
        raise UserError(f"{option} must be {least} or more, got {requested}")
    if requested > cores:
        warnings.warn(f"{option} {requested}: this process may use {cores} core(s); using {cores} {what}",
                      stacklevel=2)
        return cores
    return requested


class StreamLoader:
    """A DataLoader over a Dataset of (image, label, index) items whose batches are planned from outside.

    The workers (all cores by default; 0 decodes in this process, for debugging) persist across epochs, and
    each pass hands them its list of index batches. The loader draws its workers' seed from its own
    generator, so streaming leaves the global RNG (dropout's) as TensorBatches leaves it.
    """

    def __init__(self, dataset: Dataset, collate, workers: int | None = None, pin_memory: bool = False):
        self.workers = usable_cores() if workers is None else workers
        self.plan = _Plan()  # no reference back to this object: the workers end when it is dropped
        self.skipped: dict[str, str] = {}  # path -> reason, over every pass
        self.loader = DataLoader(dataset, batch_sampler=self.plan, collate_fn=collate, num_workers=self.workers,
                                 persistent_workers=self.workers > 0, pin_memory=pin_memory,
                                 worker_init_fn=_ignore_ctrl_c, generator=torch.Generator().manual_seed(0))

    def run(self, plan: list[torch.Tensor]) -> Iterator:
        """The collated batches of `plan` in order; the files they could not decode are added to `skipped`."""
        self.plan.batches = plan
        for batch in self.loader:
            for path, reason in batch.skipped:
                self.skipped.setdefault(path, reason)
            yield batch


def _ignore_ctrl_c(_worker_id: int) -> None:
    """Ctrl-C reaches the workers too (one process group); the main process alone decides what it means
    (stop after the step), and a worker that died of it would fail the batches still to come."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _Plan:
    """The batch sampler: whatever index batches the StreamLoader's current pass planned."""

    def __init__(self):
        self.batches: list[torch.Tensor] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter([b.tolist() for b in self.batches])

    def __len__(self) -> int:
        return len(self.batches)


class StreamBatches(ShuffledBatches):
    """TensorBatches' interface and batch order over images decoded by DataLoader workers per batch.

    Resuming skips the batches done through the plan: they are never read. A batch whose files all failed
    to decode is passed over (the position still advances).
    """

    def __init__(self, stream: StreamLoader, batch_size: int, seed: int, device: torch.device = torch.device("cpu")):
        super().__init__(len(stream.loader.dataset), batch_size, seed, device)
        self.stream = stream

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.stream.run(self.remaining()):
            self.position += 1
            if len(batch.y):
                yield to_device(batch.x, self.device), to_device(batch.y, self.device)
        self.order, self.position = None, 0


class StreamPass:
    """Every image of a stream once, in order, as (x, y) batches in host memory (for validation and the
    feature pass); `indices` lists the dataset indices of the images the last pass yielded."""

    def __init__(self, stream: StreamLoader, batch_size: int):
        self.stream, self.batch_size = stream, batch_size
        self.indices = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        """Images, as len() of a tensor counts them (those that fail to decode included)."""
        return len(self.stream.loader.dataset)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.stream.loader.dataset)
        kept = []
        for batch in self.stream.run(list(torch.arange(n).split(self.batch_size))):
            kept.append(batch.indices)
            if len(batch.y):
                yield batch.x, batch.y
        self.indices = torch.cat(kept).numpy() if kept else np.zeros(0, dtype=np.int64)


def batches_of(x: torch.Tensor | Iterable, y: torch.Tensor | None, batch_size: int,
               device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """(x, y) in order as batches on `device`: cut from tensors, or `x` already an iterable of (x, y)
    batches (a StreamPass), whose labels come with it."""
    if isinstance(x, torch.Tensor):
        for start in range(0, len(x), batch_size):
            yb = None if y is None else to_device(y[start : start + batch_size], device)
            yield to_device(x[start : start + batch_size], device), yb
    else:
        for xb, yb in x:
            yield to_device(xb, device), to_device(yb, device)

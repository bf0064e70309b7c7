"""Image folders too large to decode into memory: a Dataset that decodes each image when a batch needs it,
and the decision between the two (the decoded size against a memory budget)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..errors import UserError
from .archive import FileTree
from .folders import decode_image, naming_the_file, unreadable_reason

# What a failed read or decode raises; UserError is a zip or tar member that cannot be read.
UNREADABLE = (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError, UserError)


@dataclass(frozen=True)
class Unreadable:
    """What the Dataset returns for a file that fails to read or decode; the collate function drops it."""

    path: str
    reason: str


class FolderImages(Dataset):
    """(path, label) members of a FileTree, each read and decoded on demand into a uint8 CHW tensor.

    The tree's archive handles are per process (see archive.py), so DataLoader workers read a zip or tar
    through their own; a folder is read by path.
    """

    def __init__(self, tree: FileTree, members: list[tuple[str, int]], size: int):
        self.tree, self.members, self.size = tree, members, size
        self.labels = np.asarray([label for _, label in members], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.members)

    def decode(self, index: int) -> np.ndarray | Unreadable:
        """The image as uint8 HWC (RGB, resized to cover size x size and centre-cropped), or why not."""
        path = self.members[index][0]
        try:
            data = self.tree.read(path)
            if not data:
                raise OSError("empty file")
            with naming_the_file(f"{self.tree.path}: {path}"):  # one image at a time, in this process's thread
                return decode_image(data, (self.size, self.size), 3, cover=True)
        except UNREADABLE as e:
            return Unreadable(path, unreadable_reason(e))

    def __getitem__(self, index: int) -> tuple[torch.Tensor | Unreadable, int, int]:
        image = self.decode(index)
        if isinstance(image, Unreadable):
            return image, int(self.labels[index]), index
        return torch.from_numpy(np.array(image.transpose(2, 0, 1))), int(self.labels[index]), index  # a copy: writable

    def images(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 HWC images of `indices` decoded here (for figures), and the indices that decoded."""
        decoded = [(i, self.decode(int(i))) for i in indices]
        kept = [(i, a) for i, a in decoded if not isinstance(a, Unreadable)]
        x = np.stack([a for _, a in kept]) if kept else np.zeros((0, self.size, self.size, 3), np.uint8)
        return x, np.asarray([i for i, _ in kept], dtype=np.int64)


@dataclass
class StreamBatch:
    """A collated batch: the images that decoded (uint8 NCHW), their labels and indices, and the files that
    did not, as (path, reason)."""

    x: torch.Tensor
    y: torch.Tensor
    indices: torch.Tensor
    skipped: list[tuple[str, str]]

    def pin_memory(self) -> StreamBatch:  # DataLoader(pin_memory=True) calls this on custom batch types
        return StreamBatch(self.x.pin_memory(), self.y.pin_memory(), self.indices, self.skipped)


def collate_readable(items: list[tuple[torch.Tensor | Unreadable, int, int]]) -> StreamBatch:
    """Stack the images that decoded; an unreadable file drops out of its batch instead of ending the run."""
    good = [(x, y, i) for x, y, i in items if not isinstance(x, Unreadable)]
    skipped = [(x.path, x.reason) for x, _, _ in items if isinstance(x, Unreadable)]
    if not good:
        return StreamBatch(torch.zeros((0, 3, 1, 1), dtype=torch.uint8), torch.zeros(0, dtype=torch.int64),
                           torch.zeros(0, dtype=torch.int64), skipped)
    return StreamBatch(torch.stack([x for x, _, _ in good]), torch.tensor([y for _, y, _ in good]),
                       torch.tensor([i for _, _, i in good]), skipped)


def memory_budget() -> int:
    """Bytes the decoded images may take: half of what the system reports available (MemAvailable, which
    counts reclaimable page cache), so the model, its activations and the copies made on the way fit too."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):  # not on every platform (macOS lacks SC_AVPHYS_PAGES)
        return 4 << 30


@dataclass(frozen=True)
class Loading:
    """How a data set is read (`stream`: from disk per batch, or decoded into memory once) and why."""

    stream: bool
    reason: str
    images: int
    decoded_bytes: int
    budget_bytes: int | None
    workers: int  # DataLoader processes decoding a stream (0 in memory)

    def describe(self) -> str:
        """One line for the console."""
        if self.stream:
            return (f"streaming {_count(self.images)} images from disk with {self.workers} DataLoader "
                    f"worker{'s' if self.workers != 1 else ''}: {self.reason}")
        return f"decoding {_count(self.images)} images into memory: {self.reason}"

    def to_dict(self) -> dict:
        return {"mode": "stream" if self.stream else "memory", **asdict(self)}

    @classmethod
    def decided(cls, stream: bool, reason: str, images: int, size: int, workers: int) -> Loading:
        """A decision taken without weighing memory (a mode given, a resumed run, torchrun)."""
        return cls(stream, reason, images, decoded_bytes(images, size), None, workers if stream else 0)


def decoded_bytes(images: int, size: int) -> int:
    """What `images` RGB images of `size` x `size` take decoded into memory (uint8)."""
    return images * size * size * 3


def choose_loading(mode: str, images: int, size: int, workers: int, budget: int | None = None) -> Loading:
    """Stream when `mode` (one of STREAM_MODES, checked by FinetuneConfig) is always, or (auto) when the
    decoded images exceed the memory budget."""
    if mode != "auto":
        return Loading.decided(mode == "always", f"--stream {mode}", images, size, workers)
    decoded = decoded_bytes(images, size)
    budget = memory_budget() if budget is None else budget
    fits = decoded <= budget
    verb = "fits in" if fits else "would not fit in"
    return Loading(not fits, f"{_bytes(decoded)} decoded {verb} {_bytes(budget)} (half the available memory)",
                   images, decoded, budget, 0 if fits else workers)


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1_000_000 else f"{n:,}"


def _bytes(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.{0 if n >= 10 * scale else 1}f} {unit}"
    return f"{n} bytes"

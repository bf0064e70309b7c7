"""Baselines beside every finetune, as the scratch control stands beside every run: logistic regressions
(scores/probe.py's linear probe) fit on the training split and scored on the validation split, on the frozen
backbone's features (the ones the frozen phase trains its head on: seconds) and, for small images, on the raw
pixels. When one matches the fine-tuned network, a sentence says what that means (reporting/results.py's
baseline_verdicts)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from ..config import PIXEL_BASELINE_MAX_SIDE
from ..data import cache_dir, load_folder
from ..data.archive import open_tree
from ..data.folders import find_layout, probe
from ..scores.probe import probe_accuracy
from .image_data import ImageData, limited

NAMES = {"features": "logistic regression on the frozen features", "pixels": "logistic regression on the raw pixels"}
HEADER_SAMPLE = 20  # image headers read to tell whether a data set's images are small


@dataclass(frozen=True)
class Baseline:
    """One baseline as results.json records it (`baselines`)."""

    kind: str  # features or pixels: what it was fit on (NAMES)
    val_accuracy: float
    fit_on: str  # what the logistic regression saw, in words
    train_samples: int
    val_samples: int
    seconds: float

    def to_dict(self) -> dict:
        return {"name": NAMES[self.kind], **asdict(self), "seconds": round(self.seconds, 3)}

    def describe(self) -> str:
        return (f"baseline: {NAMES[self.kind]}: validation accuracy {self.val_accuracy:.4f} (fit on {self.fit_on}, "
                f"{self.seconds:.1f}s)")


def fit_baseline(kind: str, fit_on: str, train: tuple[torch.Tensor, torch.Tensor],
                 val: tuple[torch.Tensor, torch.Tensor]) -> Baseline:
    """The linear probe fit on `train` (x, y) and scored on `val`, timed."""
    start = time.perf_counter()
    accuracy = probe_accuracy(train[0].flatten(1), train[1], val[0].flatten(1), val[1])
    return Baseline(kind, accuracy, fit_on, len(train[1]), len(val[1]), time.perf_counter() - start)


def feature_baseline(backbone: str, train: tuple[torch.Tensor, torch.Tensor],
                     val: tuple[torch.Tensor, torch.Tensor]) -> Baseline:
    return fit_baseline("features", f"{backbone}'s frozen features ({train[0][0].numel()} per image) of the "
                        f"{len(train[1])} training images", train, val)


def pixel_baseline(origin: str, val_fraction: float, seed: int, limit: int | None, data: ImageData) -> Baseline | None:
    """On the images' own pixels (at the data set's most common size) when every image of a sample of
    headers has both sides at most PIXEL_BASELINE_MAX_SIDE; None for larger images (or streamed data)."""
    if data.loading.stream or not _small_images(origin, val_fraction, seed):
        return None
    # Grey where no image has colour (a third of the numbers to fit), else RGB.
    folder = load_folder(origin, val_fraction=val_fraction, seed=seed, cache_dir=cache_dir() / "images", cover=True,
                         exclude=data.excluded)
    (train_x, train_y), (val_x, val_y) = (limited(folder.splits[s], limit) for s in ("train", data.validation_split))
    height, width = train_x.shape[1:3]
    colour = "RGB" if train_x.ndim == 4 else "grey"
    return fit_baseline("pixels", f"the raw pixels ({width}x{height} {colour}) of the {len(train_y)} training images",
                        (torch.from_numpy(train_x).float(), torch.from_numpy(train_y)),
                        (torch.from_numpy(val_x).float(), torch.from_numpy(val_y)))


def _small_images(origin: str, val_fraction: float, seed: int) -> bool:
    """Whether a sample of the training images' headers (HEADER_SAMPLE, spread over the classes) are all small."""
    tree = open_tree(origin)
    try:
        files = [f for f, _ in find_layout(tree, val_fraction, seed).members["train"]]
        sample = files[:: max(1, len(files) // HEADER_SAMPLE)][:HEADER_SAMPLE]
        sizes = [probe(b)[0] for b in tree.read_many(sample).values() if b]
    except Exception:  # noqa: BLE001 - an unreadable header: no pixel baseline (finetune skips such files anyway)
        return False
    finally:
        tree.close()
    return bool(sizes) and max(max(s) for s in sizes) <= PIXEL_BASELINE_MAX_SIDE

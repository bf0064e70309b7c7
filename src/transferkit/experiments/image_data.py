"""An image folder data set read for a pretrained backbone (finetune, rank): the training and validation images
decoded into memory at the backbone's size, or streamed from disk when they would not fit."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..data import cache_dir, load_folder, streaming
from ..data.archive import TarTree, open_tree
from ..data.folders import find_layout
from ..data.splits import limit_per_class, subsample
from ..data.streaming import FolderImages, Loading
from ..errors import UserError


@dataclass
class ImageData:
    """The training and validation images with their labels: uint8 NHWC arrays decoded into memory, or
    FolderImages that decode from `tree` per batch (streamed)."""

    origin: str
    classes: list[str]
    loading: Loading
    train: tuple[np.ndarray | FolderImages, np.ndarray]
    val: tuple[np.ndarray | FolderImages, np.ndarray]
    skipped: list[str]  # found while decoding into memory; a stream finds its own as it reads
    # Where the validation images come from: "val" (a val/ folder, or held out of train/), or "test" (a test/
    # folder, used for validation when there is no val/), which must never fit anything, such as a temperature.
    validation_split: str = "val"
    excluded: frozenset[str] = frozenset()  # files of the data set left out (--exclude)

    def samples(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """A few training images of every class (not the first n, which are one class) for samples.png."""
        images, labels = self.train
        shown = subsample(np.arange(len(labels)), n)
        if isinstance(images, FolderImages):
            x, kept = images.images(shown)  # decoded here: a handful
            return x, labels[kept]
        return images[shown], labels[shown]

    def close(self) -> None:
        if isinstance(self.train[0], FolderImages):
            self.train[0].tree.close()


def read_image_data(data: str, val_fraction: float, seed: int, limit: int | None, stream: str, size: int,
                    world_size: int, previous: dict | None, workers: int,
                    exclude: frozenset[str] = frozenset()) -> ImageData:
    """List the files of the image folder data set `data` (at most `limit` per split), then decode them into
    memory at `size` px (covering it; cached) or, when they would not fit (`stream` auto) or when asked
    (`always`), stream them. `previous`: a resumed run's results, which decided already. Files named in `exclude`
    (--exclude) are left out."""
    tree = open_tree(data)
    try:
        exclude = frozenset(exclude & tree.files().keys())  # those of the list that are here
        layout = find_layout(tree, val_fraction, seed, exclude)
        split = "val" if "val" in layout.members else "test"
        members = {s: [layout.members[s][i] for i in limit_per_class([c for _, c in layout.members[s]], limit)]
                   for s in ("train", split)}
        n = sum(len(m) for m in members.values())
        before = (previous or {}).get("dataset", {}).get("loading")
        if before is not None:  # a resumed run reads its data as it started to, whatever memory there is now
            loading = Loading.decided(before["stream"], "as when the run started", n, size, workers)
        elif stream == "auto" and world_size > 1:  # one answer for every rank, whatever each one's memory
            loading = Loading.decided(False, "under torchrun every rank decodes into memory", n, size, workers)
        else:
            # Decoding into memory decodes the whole folder (--limit applies after), so that is what must fit.
            everything = sum(len(m) for s, m in layout.members.items() if s in ("train", split))
            loading = streaming.choose_loading(stream, everything, size, workers)
            loading = replace(loading, images=n) if loading.stream else loading
        if loading.stream:
            _check_streamable(tree, loading, world_size)
            train, val = (FolderImages(tree, members[s], size) for s in ("train", split))
            return ImageData(str(tree.path), list(layout.class_names), loading, (train, train.labels),
                             (val, val.labels), [], split, exclude)
    except BaseException:
        tree.close()
        raise
    tree.close()
    folder = load_folder(data, image_size=size, channels=3, val_fraction=val_fraction, seed=seed,
                         cache_dir=cache_dir() / "images", cover=True, exclude=exclude)
    return ImageData(folder.origin, list(folder.class_names), loading, limited(folder.splits["train"], limit),
                     limited(folder.splits[split], limit), folder.skipped, split, exclude)


def _check_streamable(tree, loading: Loading, world_size: int) -> None:
    if world_size > 1:
        raise UserError(f"{tree.path}: streaming images from disk ({loading.reason}) runs in a single process; "
                        "under torchrun use --stream never with enough memory, or run without torchrun")
    if isinstance(tree, TarTree) and tree.compressed:
        raise UserError(f"{tree.path}: streaming ({loading.reason}) reads images out of order, which a compressed "
                        "tar can only do by decompressing again; extract it, or pack it as .zip or plain .tar")


def limited(split: tuple[np.ndarray, np.ndarray], limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    x, y = split
    keep = limit_per_class(y, limit)
    return x[keep], y[keep]

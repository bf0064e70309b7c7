"""The check every export passes before it is written: the exported model against PyTorch, on the same images."""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..data import load_dataset, split_by_class
from ..data.archive import open_tree, read_regular_file
from ..data.folders import find_layout, naming_the_file, unreadable_reason
from ..data.splits import limit_per_class, subsample
from ..errors import UserError
from ..inference.classifier import Classifier
from ..inference.formats import TOLERANCE, Runner
from ..inference.graph import graph_input
from ..inference.predict import image_files, no_images

CHECK_LIMIT = 256  # validation images checked at most (drawn with a fixed seed), to keep an export quick
CHECK_BYTES = 256 << 20  # image files read for the check at most, in all (each also within MAX_FILE_BYTES)
BATCH = 32


@dataclass(frozen=True)
class CheckResult:
    """How the exported model compared with PyTorch."""

    images: str  # where the images came from
    checked: int
    unreadable: int
    max_probability_difference: float
    same_top1: int
    tolerance: float = TOLERANCE
    first_unreadable: str | None = None  # "name: why", when some image could not be decoded

    @property
    def passed(self) -> bool:
        return self.checked > 0 and self.max_probability_difference <= self.tolerance and self.same_top1 == self.checked

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    def summary(self) -> str:
        if self.checked == 0:
            return (f"none of the {self.unreadable} image(s) from {self.images} could be read (first: "
                    f"{self.first_unreadable}); give readable images with --check IMAGES")
        return (f"{self.checked} image(s) from {self.images}: largest probability difference "
                f"{self.max_probability_difference:.2e} (at most {self.tolerance:g}), same top-1 class on "
                f"{self.same_top1} of {self.checked}")


def run_images(run_dir: Path, results: dict, limit: int = CHECK_LIMIT) -> tuple[str, list[tuple[str, bytes]]]:
    """The run's own validation images (at most `limit`), as (name, encoded bytes), and where they came from."""
    origin, images, _ = labelled_run_images(run_dir, results, limit)
    return origin, images


def labelled_run_images(run_dir: Path, results: dict, limit: int = CHECK_LIMIT, training: bool = False,
                        instead: str = "give images with --check IMAGES") -> tuple[str, list[tuple[str, bytes]], list[str]]:
    """The run's own validation images (at most `limit`, drawn with a fixed seed) or, with `training`, its
    training images (at most `limit`, spread evenly over the classes: limit_per_class), as (name, encoded
    bytes), with the class name of each and where they came from. `instead`: the advice when they are gone."""
    config = results.get("config", {})
    if results.get("experiment") == "finetune":
        data = config.get("data")
        if not data or not Path(data).exists():
            raise UserError(f"{run_dir}: its {'training' if training else 'validation'} images ({data}) are not "
                            f"there; {instead}")
        tree = open_tree(data)
        try:
            layout = find_layout(tree, config.get("val_fraction", 0.2), config.get("seed", 0))
            members = (layout.members.get("train") if training else
                       layout.members.get("val") or layout.members.get("test")) or []
            keep = _drawn([label for _, label in members], limit, training)
            where = "training" if training else "validation"
            images = _within_budget((members[i][0], tree.read) for i in keep)
            return (f"the {where} set of {data}", images,
                    [layout.class_names[members[i][1]] for i in keep[:len(images)]])
        finally:
            tree.close()
    dataset, data = config.get("dataset"), config.get("data")
    if (dataset not in ("mnist", "cifar10") and not Path(str(dataset)).exists()) or (data and not Path(data).exists()):
        raise UserError(f"{run_dir}: its data set ({data or dataset}) is not there; {instead}")
    arrays = load_dataset(dataset, data, val_fraction=config.get("val_fraction") or 0.2, seed=config.get("seed") or 0,
                          image_size=config.get("image_size"))
    targets = [arrays.class_names.index(c) for c in config["target_classes"]]
    split = split_by_class(arrays, targets)
    x, y = (split.x_train, split.y_train) if training else (split.x_test, split.y_test)
    keep = _drawn(y, limit, training)
    return (f"the {'training' if training else 'test'} images of {', '.join(config['target_classes'])} in "
            f"{data or dataset}", [(f"{'training' if training else 'test'} image {i}", _png(x[i])) for i in keep],
            [split.class_names[y[i]] for i in keep])


def _drawn(labels, limit: int, per_class: bool) -> np.ndarray:
    """Positions of at most `limit` of `labels`: spread evenly over the classes, or drawn from all."""
    labels = np.asarray(labels, dtype=np.int64)
    return limit_per_class(labels, limit) if per_class else subsample(np.arange(len(labels)), limit)


def given_images(inputs: list[str | Path], limit: int = CHECK_LIMIT,
                 option: str = "--check") -> tuple[str, list[tuple[str, bytes]]]:
    """Image files and folders named with --check (or `option`; at most `limit` files, drawn with a fixed seed), each read
    as predict reads it (read_regular_file: bounded, never blocking), CHECK_BYTES in all."""
    files = image_files(inputs)
    empty = [f for f in files if f.is_dir()]
    if empty:
        raise UserError(f"{option} {no_images(empty[0])}; give image files or folders that hold images")
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise UserError(f"{option} {missing[0]}: no such file; give image files or folders that hold images")
    if not files:
        raise UserError(f"{option} {' '.join(map(str, inputs))}: no images found; give image files or folders of them")
    keep = subsample(np.arange(len(files)), limit)
    return option + " " + " ".join(map(str, inputs)), _within_budget((str(files[i]), _read_file) for i in keep)


def _read_file(name: str) -> bytes:
    return read_regular_file(Path(name))


def _within_budget(items) -> list[tuple[str, bytes]]:
    """(name, read(name)) for each (name, read), until CHECK_BYTES are read (the first file always)."""
    images, total = [], 0
    for name, read in items:
        data = read(name)
        if images and total + len(data) > CHECK_BYTES:
            break
        images.append((name, data))
        total += len(data)
    return images


def compare(reference: Classifier, exported: Runner, images: list[tuple[str, bytes]], origin: str,
            height: int, width: int, tolerance: float = TOLERANCE) -> CheckResult:
    """Decode each image as predict does (cropped as it is decoded), BATCH at a time, run both models on each
    batch, and measure the largest difference."""
    checked, unreadable, first_unreadable, worst, same = 0, 0, None, 0.0, 0
    for start in range(0, len(images), BATCH):
        decoded = []
        for name, data in images[start:start + BATCH]:
            try:
                with naming_the_file(name):
                    decoded.append(reference.decode(data))
            except Exception as e:  # noqa: BLE001 - an unreadable file is counted, as predict reports it
                unreadable += 1
                first_unreadable = first_unreadable or f"{name}: {type(e).__name__}: {unreadable_reason(e)}"
        if not decoded:
            continue
        batch = np.stack(decoded)
        expected = reference.probabilities(batch)
        got = exported(graph_input(batch, height, width))
        if checked == 0:  # one image alone as well: the batch size is free, and batch 1 is a deployment's usual
            alone = exported(graph_input(batch[:1], height, width))
            worst = float(np.abs(alone - expected[:1]).max())
        worst = max(worst, float(np.abs(got - expected).max()))
        same += int((got.argmax(1) == expected.argmax(1)).sum())
        checked += len(batch)
    return CheckResult(origin, checked, unreadable, worst, same, tolerance, first_unreadable)


def _png(image: np.ndarray) -> bytes:
    """An array of the data set as an image file, so it is decoded exactly as predict decodes files."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()

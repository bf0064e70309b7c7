"""Choosing classes for each phase (`--source 0-4 --target 5-9`) and cutting a data set by class."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from .arrays import ArrayDataset


def parse_classes(spec: str | Iterable[int | str], class_names: Sequence[str], option: str = "--classes") -> list[int]:
    """Resolve a class spec to class indices, in the order given.

    A spec is a comma list of class names, indices or inclusive ranges (`0-4`, `5,7,9`, `dog,frog`, `9-5`),
    or an iterable of names / indices (`range(5)`). Names win over indices when both could match.
    """
    tokens = [t.strip() for t in spec.split(",")] if isinstance(spec, str) else [str(t) for t in spec]
    tokens = [t for t in tokens if t]
    if not tokens:
        raise UserError(f"{option} is empty; name at least one class, e.g. {option} 0-4")
    indices: list[int] = []
    for token in tokens:
        for index in _resolve_token(token, class_names, option):
            if index in indices:
                raise UserError(f"{option}: class {class_names[index]!r} is listed twice")
            indices.append(index)
    return indices


def _resolve_token(token: str, class_names: Sequence[str], option: str) -> list[int]:
    single = _resolve_one(token, class_names)
    if single is not None:
        return [single]
    if "-" in token:
        first, _, last = token.partition("-")
        lo, hi = _resolve_one(first.strip(), class_names), _resolve_one(last.strip(), class_names)
        if lo is not None and hi is not None:
            step = 1 if hi >= lo else -1
            return list(range(lo, hi + step, step))
    known = ", ".join(class_names) if len(class_names) <= 20 else f"{len(class_names)} classes"
    raise UserError(
        f"{option}: unknown class {token!r}; use names or indices 0-{len(class_names) - 1} (classes: {known})"
    )


def _resolve_one(token: str, class_names: Sequence[str]) -> int | None:
    if token in class_names:
        return list(class_names).index(token)
    if token.isdigit() and int(token) < len(class_names):
        return int(token)
    return None


@dataclass(frozen=True)
class ClassSplit:
    """The images of some classes, labels remapped to 0..k-1 in the order the classes were given."""

    class_names: tuple[str, ...]
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def resolve_split(source: object, target: object, class_names: Sequence[str],
                  source_trained: bool = True) -> tuple[list[int], list[int]]:
    """Parse --source and --target and check they do not overlap; None means the first / second half.

    Each trained side needs two classes or more: on one class a network learns nothing (its loss is 0 from
    the first step), which would make the comparison meaningless. `source_trained` False: --backbone runs,
    whose source is ImageNet.
    """
    half = len(class_names) // 2
    src = list(range(half)) if source is None else parse_classes(source, class_names, "--source")
    tgt = list(range(half, len(class_names))) if target is None else parse_classes(target, class_names, "--target")
    # A backbone's source is its pretraining: the default first half is no class set it could share.
    overlap = [class_names[i] for i in src if i in tgt] if source_trained or source is not None else []
    if overlap:
        raise UserError(
            f"--source and --target share class(es) {', '.join(overlap)}; transfer needs disjoint class sets"
        )
    for option, given, classes in (("--source", source, src if source_trained else None), ("--target", target, tgt)):
        if classes is not None and len(classes) < 2:
            default = "" if given is not None else f" (by default, half of the {len(class_names)} classes)"
            held = f"only {class_names[classes[0]]}" if classes else "no class"
            raise UserError(f"{option}{default} holds {held}; a classifier needs 2 classes or more: give --source "
                            f"and --target 2 or more each (classes: {', '.join(class_names)})")
    return src, tgt


def subsample(indices: np.ndarray, limit: int | None) -> np.ndarray:
    """At most `limit` of `indices`, drawn at random (fixed seed) and kept in order.

    Not the first `limit`: folder data sets are sorted by class, so their first images are all one class.
    """
    if limit is None or len(indices) <= limit:
        return indices
    return np.sort(np.random.default_rng(0).choice(indices, size=limit, replace=False))


def limit_per_class(labels: np.ndarray, limit: int | None) -> np.ndarray:
    """Positions of at most `limit` of `labels`, spread evenly over the classes (--limit, for every command):
    each of k classes gets limit / k, a class with fewer gives all it has and the rest is shared by the others.
    Drawn at random within each class (fixed seed) and kept in order, so the same labels give the same images.
    """
    labels = np.asarray(labels)
    if limit is None or len(labels) <= limit:
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    take, left = {}, limit
    for i, c in enumerate(np.argsort(counts, kind="stable")):  # the smallest classes first: they may give less
        take[c] = min(int(counts[c]), left // (len(classes) - i))
        left -= take[c]
    rng = np.random.default_rng(0)
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == classes[c]), size=n, replace=False)
                                   for c, n in sorted(take.items())]))


def split_by_class(data: ArrayDataset, classes: Sequence[int], limit: int | None = None) -> ClassSplit:
    """Keep the images of `classes`, relabelled 0..k-1 in that order; at most `limit` per split, spread over
    the classes (limit_per_class)."""
    remap = np.full(len(data.class_names), -1, dtype=np.int64)
    remap[list(classes)] = np.arange(len(classes))
    parts = []
    for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        kept = np.flatnonzero(remap[y] >= 0)
        keep = kept[limit_per_class(y[kept], limit)]
        parts += [x[keep], remap[y[keep]]]
    names = tuple(data.class_names[i] for i in classes)
    for split, labels in (("train", parts[1]), ("test", parts[3])):
        if len(labels) == 0:
            raise UserError(f"{data.origin}: no {split} images for classes {', '.join(names)}")
    return ClassSplit(names, *parts)


def fewer_training_images(split: ClassSplit, shots: int | None = None, fraction: float | None = None,
                          seed: int = 0) -> ClassSplit:
    """Keep `shots` training images per class (or that `fraction` of each class), drawn with `seed`; the test
    images stay all there, so small-data runs are measured on the same test set as full ones."""
    if shots is None and fraction is None:
        return split
    rng = np.random.default_rng(seed)
    keep = []
    for label, name in enumerate(split.class_names):
        members = np.flatnonzero(split.y_train == label)
        n = shots if shots is not None else max(1, round(fraction * len(members)))
        if n > len(members):
            raise UserError(f"--shots {shots}: class {name!r} has only {len(members)} training images; "
                            f"give --shots {len(members)} or fewer")
        keep.append(rng.choice(members, size=n, replace=False))
    keep = np.sort(np.concatenate(keep))
    return ClassSplit(split.class_names, split.x_train[keep], split.y_train[keep], split.x_test, split.y_test)

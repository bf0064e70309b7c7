"""Data: sources (bundled MNIST, npz, IDX) and splitting by class."""

from .arrays import ArrayDataset
from .mnist import load_mnist
from .splits import ClassSplit, parse_classes, resolve_split, split_by_class

DATASETS = {"mnist": load_mnist}


def load_dataset(name: str, path: str | None = None) -> ArrayDataset:
    """Load a named data set, from `path` when given, else from what ships with transferkit."""
    from ..errors import UserError

    if name not in DATASETS:
        raise UserError(f"unknown data set {name!r}; available: {', '.join(DATASETS)}")
    return DATASETS[name](path)


__all__ = ["ArrayDataset", "ClassSplit", "DATASETS", "load_dataset", "load_mnist", "parse_classes",
           "resolve_split", "split_by_class"]

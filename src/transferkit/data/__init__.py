"""Data: sources (bundled MNIST, npz, IDX, CIFAR-10, image folders and archives) and splitting by class."""

from __future__ import annotations

from pathlib import Path

from ..download import download
from ..errors import UserError
from ..paths import cache_dir
from .archive import open_tree
from .arrays import ArrayDataset
from .cifar import ARCHIVE_NAME, is_python_version, load_cifar10_python
from .folders import FolderData, load_folder
from .mnist import load_mnist
from .splits import ClassSplit, parse_classes, resolve_split, split_by_class

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def load_dataset(name: str, data: str | None = None, *, val_fraction: float = 0.2, seed: int = 0,
                 image_size: int | None = None, exclude: frozenset[str] = frozenset()) -> ArrayDataset:
    """`mnist`, `cifar10` (optionally from `data`), or a path to an image folder data set / archive; `exclude`:
    files of a folder data set to leave out (--exclude)."""
    if exclude and (name == "mnist" or (name == "cifar10" and data is None)):
        raise UserError(f"--exclude is for image folder data sets, not {name}'s arrays; drop --exclude")
    if name == "mnist":
        if image_size is not None:  # ignored, it would still be recorded in results.json as if it were used
            raise UserError(f"--image-size is for image folders; MNIST's images are 28x28 (drop --image-size {image_size})")
        return load_mnist(data)
    if name == "cifar10":
        path = Path(data) if data is not None else find_or_download_cifar10()
        if not path.exists():
            raise UserError(f"--data {path}: no such file or folder")
        if is_python_version(path):
            if image_size is not None:
                raise UserError(f"--image-size is for image folders; the CIFAR-10 archive's images are 32x32 "
                                f"(drop --image-size {image_size})")
            if exclude:
                raise UserError("--exclude is for image folder data sets, not the CIFAR-10 archive; drop --exclude")
            return load_cifar10_python(path)
        return from_folder(path, "cifar10", val_fraction, seed, image_size, exclude)
    if data is not None:
        raise UserError(f"--data is for mnist and cifar10; for a folder data set give its path as DATASET ({name})")
    if not Path(name).exists():
        raise UserError(f"{name}: no such file or folder; DATASET is mnist, cifar10, or a folder of class folders "
                        "(or a .zip / .tar.gz of one)")
    return from_folder(Path(name), Path(name).stem or "images", val_fraction, seed, image_size, exclude)


def from_folder(path: Path, name: str, val_fraction: float, seed: int, image_size: int | None,
                exclude: frozenset[str] = frozenset()) -> ArrayDataset:
    """A folder data set as train / test arrays (test: test/ if present, else val/ or the held-out part)."""
    if exclude:  # those of the list that are here, recorded
        tree = open_tree(path)
        try:
            exclude = frozenset(exclude & tree.files().keys())
        finally:
            tree.close()
    folder = load_folder(path, image_size=image_size, val_fraction=val_fraction, seed=seed,
                         cache_dir=cache_dir() / "images", exclude=exclude)
    x_train, y_train = folder.splits["train"]
    x_test, y_test = folder.splits.get("test", folder.splits.get("val"))
    return ArrayDataset(name, x_train, y_train, x_test, y_test, folder.class_names, folder.origin,
                        tuple(folder.skipped), "test" if "test" in folder.splits else "val", tuple(sorted(exclude)))


def find_or_download_cifar10(timeout: float = 10.0, url: str = CIFAR10_URL) -> Path:
    """The official archive from the cache, downloaded there first when the network allows."""
    target = cache_dir() / "cifar10" / ARCHIVE_NAME
    if target.is_file():
        return target
    download(url, target, timeout, if_offline=(
        f"CIFAR-10 is not here and cannot be downloaded (no network?): put {ARCHIVE_NAME} in {target.parent}, "
        "or pass --data PATH (the archive, its extracted folder, or a folder/zip of class folders such as "
        "cifar10-jpg.zip)"))
    return target


__all__ = ["ArrayDataset", "ClassSplit", "FolderData", "cache_dir", "from_folder", "load_dataset",
           "load_folder", "load_mnist", "parse_classes", "resolve_split", "split_by_class"]

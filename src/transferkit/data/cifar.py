"""CIFAR-10: the official "python version" (cifar-10-python.tar.gz or its extracted folder), or class folders."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

from ..errors import UserError
from .archive import read_bounded, read_regular_file, tar_error
from .arrays import ArrayDataset

ARCHIVE_NAME = "cifar-10-python.tar.gz"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def is_python_version(path: Path) -> bool:
    """True for the official archive or a folder holding its batches (data_batch_1 ... test_batch)."""
    if path.is_dir():
        return any((d / "data_batch_1").is_file() for d in (path, path / "cifar-10-batches-py"))
    return path.name.endswith((".tar.gz", ".tgz", ".tar")) and _tar_has_batches(path)


def _tar_has_batches(path: Path) -> bool:
    try:
        with tarfile.open(path) as tar:
            return any(m.name.endswith("data_batch_1") for m in tar.getmembers())
    except (tarfile.TarError, OSError, EOFError):
        return False



def load_cifar10_python(path: Path) -> ArrayDataset:
    """Read the five training batches and the test batch; pickles hold only dicts of arrays, loaded safely."""
    batches: dict[str, dict] = {}
    if path.is_dir():
        folder = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else path
        for name in (*TRAIN_BATCHES, TEST_BATCH, "batches.meta"):
            f = folder / name
            if not f.is_file():
                raise UserError(f"{folder}: {name} is missing; the CIFAR-10 python folder needs data_batch_1..5, "
                                "test_batch and batches.meta")
            batches[name] = unpickle_arrays(read_regular_file(f), f)
    else:
        try:
            with tarfile.open(path) as tar:
                for m in tar.getmembers():
                    name = m.name.rsplit("/", 1)[-1]
                    if m.isfile() and name in (*TRAIN_BATCHES, TEST_BATCH, "batches.meta"):
                        data = read_bounded(tar.extractfile(m), f"{path}: member {m.name!r}", m.size)
                        batches[name] = unpickle_arrays(data, path)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise UserError(f"{path}: not a readable CIFAR-10 archive ({tar_error(e)}); re-download {ARCHIVE_NAME}") from None
        missing = [n for n in (*TRAIN_BATCHES, TEST_BATCH) if n not in batches]
        if missing:
            raise UserError(f"{path}: missing {', '.join(missing)}; this is not the complete CIFAR-10 python archive")
    names = CLASS_NAMES
    if "batches.meta" in batches:
        names = tuple(str(_text(n)) for n in batches["batches.meta"]["label_names"])
    x_train, y_train = _stack([batches[n] for n in TRAIN_BATCHES], path)
    x_test, y_test = _stack([batches[TEST_BATCH]], path)
    return ArrayDataset("cifar10", x_train, y_train, x_test, y_test, names, str(path))


class _ArraysOnly(pickle.Unpickler):
    """The batches are dicts of bytes, lists and NumPy arrays; anything else is refused rather than executed."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def unpickle_arrays(data: bytes, where: Path) -> dict:
    """A CIFAR batch's dict, unpickled allowing only numpy arrays and plain values (never code); `where` names
    the file in the error."""
    try:
        obj = _ArraysOnly(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise UserError(f"{where}: a CIFAR-10 batch cannot be read ({e}); re-download {ARCHIVE_NAME}") from None
    if not isinstance(obj, dict):
        raise UserError(f"{where}: a CIFAR-10 batch is not a dict; re-download {ARCHIVE_NAME}")
    return {_text(k): v for k, v in obj.items()}  # a key that is not UTF-8 is kept, escaped, and never used


def _text(value: object) -> object:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value


def _stack(batches: list[dict], where: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        x = np.concatenate([np.asarray(b["data"], dtype=np.uint8).reshape(-1, 3, 32, 32) for b in batches])
        y = np.concatenate([np.asarray(b["labels"], dtype=np.int64) for b in batches])
    except (KeyError, ValueError) as e:
        raise UserError(f"{where}: CIFAR-10 batch without 3x32x32 'data' and 'labels' ({e})") from None
    return x.transpose(0, 2, 3, 1).copy(), y  # to (N, H, W, C)

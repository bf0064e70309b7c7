"""MNIST: the copy bundled with the package, a user's npz (Keras layout), or a folder of the four IDX files."""

from __future__ import annotations

import gzip
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import UserError, first_line
from .arrays import ArrayDataset

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
CLASS_NAMES = tuple(str(d) for d in range(10))


def load_mnist(path: str | Path | None = None) -> ArrayDataset:
    """Load MNIST from `path` (an .npz file or a folder of IDX files), or the bundled copy when None."""
    if path is None:
        with resources.as_file(resources.files("transferkit.data") / "mnist.npz") as bundled:
            return _from_arrays(_read_npz(bundled), str(bundled))
    path = Path(path)
    if not path.exists():
        raise UserError(f"--data {path}: no such file or folder; give an .npz file or a folder of MNIST IDX files")
    if path.is_dir():
        return _from_arrays(_read_idx_folder(path), str(path))
    return _from_arrays(_read_npz(path), str(path))


def _from_arrays(arrays: dict[str, np.ndarray], origin: str) -> ArrayDataset:
    return ArrayDataset(
        name="mnist",
        x_train=arrays["x_train"],
        y_train=arrays["y_train"].astype(np.int64) if _is_int(arrays["y_train"]) else arrays["y_train"],
        x_test=arrays["x_test"],
        y_test=arrays["y_test"].astype(np.int64) if _is_int(arrays["y_test"]) else arrays["y_test"],
        class_names=CLASS_NAMES,
        origin=origin,
    )


def _is_int(a: np.ndarray) -> bool:
    return isinstance(a, np.ndarray) and np.issubdtype(a.dtype, np.integer)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        # allow_pickle=False: an npz must never run code when it is read.
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in NPZ_KEYS if k not in npz.files]
            if missing:
                raise UserError(
                    f"{path}: missing key(s) {', '.join(missing)}; an MNIST npz needs {', '.join(NPZ_KEYS)} "
                    f"(found: {', '.join(npz.files) or 'none'})"
                )
            return {k: npz[k] for k in NPZ_KEYS}
    except UserError:
        raise
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder; give the .npz file itself") from None
    except PermissionError:
        raise UserError(f"{path}: permission denied; make the file readable") from None
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        # numpy takes a file that is no zip for a pickle and says to allow pickles; transferkit never does.
        reason = "not a zip of arrays" if "pickle" in str(e) else first_line(e)
        raise UserError(f"{path}: not a readable .npz file ({reason}); re-download or re-save it") from None


def _read_idx_folder(folder: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for key, stem in IDX_FILES.items():
        candidates = [folder / stem, folder / f"{stem}.gz", folder / stem.replace("-idx", ".idx")]
        candidates += [Path(f"{c}.gz") for c in candidates[2:]]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise UserError(f"{folder}: no {stem}(.gz) in this folder; an MNIST folder needs the four IDX files")
        arrays[key] = read_idx(found)
    return arrays


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (gzipped or not) into a uint8 array, checking its header against its size."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except PermissionError:
        raise UserError(f"{path}: permission denied; make the file readable") from None
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"{path}: cannot be read ({first_line(e)}); re-download it") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim not in (1, 3) or len(raw) < header:
        raise UserError(f"{path}: IDX header says {ndim} dimensions; MNIST images have 3 and labels 1")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise UserError(
            f"{path}: header promises shape {shape} ({expected} bytes) but the file holds {len(raw) - header}; "
            "the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()



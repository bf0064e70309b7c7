import io
import pickle
import tarfile

import numpy as np
import pytest

from transferkit.data import find_or_download_cifar10, load_dataset
from transferkit.data.cifar import CLASS_NAMES
from transferkit.errors import UserError


def _batch(n, seed):
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"x", b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"f"] * n}


def make_archive(path, n=20, extra=None):
    """An archive in the official pickle-batch format, small."""
    with tarfile.open(path, "w:gz") as tar:
        members = {f"data_batch_{i}": _batch(n, i) for i in range(1, 6)}
        members["test_batch"] = _batch(n, 9)
        members["batches.meta"] = {b"label_names": [c.encode() for c in CLASS_NAMES], b"num_vis": 3072}
        members.update(extra or {})
        for name, obj in members.items():
            data = pickle.dumps(obj, protocol=2) if not isinstance(obj, bytes) else obj
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_reads_the_python_version(tmp_path):
    path = make_archive(tmp_path / "cifar-10-python.tar.gz")
    data = load_dataset("cifar10", str(path))
    assert data.x_train.shape == (100, 32, 32, 3) and data.x_test.shape == (20, 32, 32, 3)
    assert data.class_names == CLASS_NAMES
    first = _batch(20, 1)
    # channel-planar rows become HWC pixels
    assert np.array_equal(data.x_train[0, :, :, 0].ravel(), first[b"data"][0, :1024])
    assert data.y_train[:20].tolist() == [int(v) for v in first[b"labels"]]


def test_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = make_archive(tmp_path / "evil.tar.gz", extra={"data_batch_1": pickle.dumps(Evil())})
    with pytest.raises(UserError, match="refusing to load builtins.print"):
        load_dataset("cifar10", str(path))


def test_missing_without_network_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(UserError, match=r"put cifar-10-python.tar.gz in .*cifar10"):
        find_or_download_cifar10(timeout=2, url="http://127.0.0.1:9/cifar-10-python.tar.gz")

import numpy as np
import pytest
from conftest import write_idx

from transferkit.data import load_mnist
from transferkit.data.mnist import IDX_FILES
from transferkit.errors import UserError


def test_bundled_copy_is_the_full_data_set():
    data = load_mnist()
    assert data.x_train.shape == (60000, 28, 28) and data.x_test.shape == (10000, 28, 28)
    assert data.x_train.dtype == np.uint8
    # Label counts stated in shared/data/README.md.
    assert np.bincount(data.y_train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(data.y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert data.image_shape == (1, 28, 28)


def test_user_npz(npz_file, arrays):
    data = load_mnist(npz_file)
    assert np.array_equal(data.x_train, arrays["x_train"])
    assert np.array_equal(data.y_test, arrays["y_test"])
    assert data.origin == str(npz_file)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_folder(tmp_path, arrays, compress):
    for key, stem in IDX_FILES.items():
        write_idx(tmp_path / (stem + (".gz" if compress else "")), arrays[key], compress)
    data = load_mnist(tmp_path)
    for key in IDX_FILES:
        assert np.array_equal(getattr(data, key), arrays[key])


def _npz_with(tmp_path, arrays, **changes):
    path = tmp_path / "bad.npz"
    content = {**arrays, **changes}
    np.savez(path, **{k: v for k, v in content.items() if v is not None})
    return path


@pytest.mark.parametrize("changes, message", [
    ({"x_test": None}, "missing key(s) x_test"),
    ({"x_train": np.zeros((10, 28), np.uint8)}, "x_train has shape (10, 28)"),
    ({"x_train": np.zeros((200, 28, 28), np.float32)}, "x_train has dtype float32"),
    ({"y_train": np.full(200, 10, np.uint8)}, "y_train has labels from 10 to 10; expected 0 to 9"),
    ({"y_train": np.zeros(199, np.uint8)}, "x_train has 200 images but y_train has 199 labels"),
    ({"y_test": np.zeros((100, 10), np.uint8)}, "y_test has shape (100, 10)"),
    ({"x_test": np.zeros((100, 32, 32), np.uint8)}, "train images are (28, 28) but test images are (32, 32)"),
])
def test_bad_npz_names_file_and_problem(tmp_path, arrays, changes, message):
    path = _npz_with(tmp_path, arrays, **changes)
    with pytest.raises(UserError) as e:
        load_mnist(path)
    assert str(path) in str(e.value) and message in str(e.value)


def test_truncated_npz(tmp_path, npz_file):
    cut = tmp_path / "cut.npz"
    cut.write_bytes(npz_file.read_bytes()[:5000])
    with pytest.raises(UserError, match="not a readable .npz file"):
        load_mnist(cut)


def test_missing_path(tmp_path):
    with pytest.raises(UserError, match="no such file or folder"):
        load_mnist(tmp_path / "nope.npz")


def test_idx_folder_missing_file(tmp_path, arrays):
    write_idx(tmp_path / IDX_FILES["x_train"], arrays["x_train"], False)
    with pytest.raises(UserError, match="no train-labels-idx1-ubyte"):
        load_mnist(tmp_path)


def test_truncated_idx(tmp_path, arrays):
    for key, stem in IDX_FILES.items():
        write_idx(tmp_path / stem, arrays[key], False)
    f = tmp_path / IDX_FILES["x_test"]
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_mnist(tmp_path)


def test_idx_bad_magic(tmp_path, arrays):
    for key, stem in IDX_FILES.items():
        write_idx(tmp_path / stem, arrays[key], False)
    (tmp_path / IDX_FILES["y_train"]).write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(UserError, match="bad magic number"):
        load_mnist(tmp_path)

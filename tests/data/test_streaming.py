"""Streaming image folders: the Dataset decodes as load_folder does, unreadable files drop out of their batch,
DataLoader workers read a zip through their own handles, StreamBatches keeps TensorBatches' order and state."""

import io
import pickle
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from transferkit.data import load_folder, streaming
from transferkit.data.archive import open_tree
from transferkit.data.folders import find_layout
from transferkit.data.streaming import FolderImages, collate_readable
from transferkit.training import StreamBatches, StreamLoader, StreamPass, TensorBatches


def _jpeg(color, size) -> bytes:
    rng = np.random.default_rng(sum(color))
    arr = np.clip(np.array(color) + rng.integers(-30, 30, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def folder(tmp_path):
    """Two classes of odd-sized photos and PNGs, with a broken and an empty file among them."""
    root = tmp_path / "pets"
    for c, color in (("cat", (200, 40, 40)), ("dog", (40, 40, 200))):
        (root / c).mkdir(parents=True)
        for i in range(5):
            (root / c / f"{i}.jpg").write_bytes(_jpeg((color[0] + i, color[1], color[2]), (30 + 3 * i, 20 + i)))
    Image.new("L", (17, 25), 90).save(root / "dog" / "gray.png")
    (root / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "dog" / "empty.jpg").write_bytes(b"")
    return root


def _zip(root, path):
    with zipfile.ZipFile(path, "w") as z:
        for f in sorted(root.rglob("*")):
            if f.is_file():
                z.write(f, f"pets/{f.relative_to(root).as_posix()}")
    return path


def _images(path, size=16):
    tree = open_tree(path)
    members = find_layout(tree, 0.3, 0).members
    return FolderImages(tree, members["train"] + members["val"], size)


def test_items_decode_as_load_folder_does_and_broken_files_are_markers(folder):
    images = _images(folder)
    with pytest.warns(UserWarning, match="skipped 2 file"):
        data = load_folder(folder, image_size=16, channels=3, val_fraction=0.3, cover=True)
    memory = np.concatenate([data.splits["train"][0], data.splits["val"][0]])
    items = [images[i] for i in range(len(images))]
    bad = {x.path: x.reason for x, _, _ in items if isinstance(x, streaming.Unreadable)}
    assert sorted(bad) == ["cat/broken.jpg", "dog/empty.jpg"] and bad["dog/empty.jpg"] == "empty file"
    good = [(x, y, i) for x, y, i in items if isinstance(x, torch.Tensor)]
    assert all(x.shape == (3, 16, 16) and x.dtype == torch.uint8 for x, _, _ in good)
    # the same pixels as the in-memory path, in the same order once its skipped files are left out
    assert np.array_equal(np.stack([x.permute(1, 2, 0).numpy() for x, _, _ in good]), memory)
    batch = collate_readable(items[:6])
    assert len(batch.y) == len(batch.x) == len(batch.indices) == 6 - sum(
        isinstance(x, streaming.Unreadable) for x, _, _ in items[:6])
    assert batch.skipped == [(p, r) for p, r in bad.items() if p.startswith("cat")]
    x, kept = images.images(np.arange(len(images)))
    assert x.shape == (len(good), 16, 16, 3) and kept.tolist() == [i for _, _, i in good]


def test_workers_read_a_zip_through_their_own_handles(folder, tmp_path):
    images = _images(_zip(folder, tmp_path / "pets.zip"))
    assert pickle.loads(pickle.dumps(images.tree)).read("pets/cat/0.jpg") == (folder / "cat" / "0.jpg").read_bytes()
    inline = StreamPass(StreamLoader(images, collate_readable, workers=0), 4)
    parallel = StreamPass(StreamLoader(images, collate_readable, workers=2), 4)
    a, b = (torch.cat([x for x, _ in p]) for p in (inline, parallel))
    assert torch.equal(a, b) and len(a) == len(images) - 2
    assert np.array_equal(inline.indices, parallel.indices)
    assert sorted(parallel.stream.skipped) == ["pets/cat/broken.jpg", "pets/dog/empty.jpg"]
    assert torch.equal(torch.cat([x for x, _ in parallel]), a)  # the persistent workers serve a second pass
    images.tree.close()


class CountingImages(FolderImages):
    """Counts the items decoded (in this process: workers=0)."""

    decoded = 0

    def __getitem__(self, index):
        CountingImages.decoded += 1
        return super().__getitem__(index)


def test_stream_batches_follow_tensor_batches_and_resume_without_decoding_the_done(tmp_path):
    root = tmp_path / "solid"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(7):
            Image.new("RGB", (8, 8), (30 * i, 100 if c == "a" else 0, 0)).save(root / c / f"{i}.png")
    tree = open_tree(root)
    members = find_layout(tree, 0.2, 0).members["train"]
    images = CountingImages(tree, members, 8)
    x = torch.stack([images[i][0] for i in range(len(images))])
    y = torch.from_numpy(images.labels)
    reference = TensorBatches(x, y, 3, seed=5)
    stream = StreamBatches(StreamLoader(images, collate_readable, workers=0), 3, seed=5)
    assert len(stream) == len(reference)
    for _ in range(2):  # two epochs, a new order each
        for (xa, ya), (xb, yb) in zip(reference, stream, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    for batches in (reference, stream):  # stop after two batches of the third epoch
        it = iter(batches)
        next(it), next(it)
    tensors, meta = stream.state_dict()
    assert meta == {"position": 2} and torch.equal(tensors["batches.order"], reference.state_dict()[0]["batches.order"])
    resumed = StreamBatches(StreamLoader(images, collate_readable, workers=0), 3, seed=99)
    resumed.load_state_dict(tensors, meta)
    CountingImages.decoded = 0
    rest = [(xb, yb) for xb, yb in resumed]
    assert CountingImages.decoded == len(images) - 2 * 3  # the batches done are not read again
    for (xa, ya), (xb, yb) in zip(reference, rest, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert resumed.position == 0 and resumed.order is None


def test_the_decision_weighs_the_decoded_size_against_the_budget(monkeypatch):
    assert streaming.memory_budget() > 0
    big = streaming.choose_loading("auto", 1_200_000, 256, 8, budget=11 * 10**9)
    assert big.stream and big.decoded_bytes == 1_200_000 * 256 * 256 * 3
    assert big.describe() == ("streaming 1.2M images from disk with 8 DataLoader workers: "
                              "236 GB decoded would not fit in 11 GB (half the available memory)")
    small = streaming.choose_loading("auto", 1000, 64, 8, budget=11 * 10**9)
    assert not small.stream and small.describe().startswith("decoding 1,000 images into memory: 12 MB decoded fits")
    monkeypatch.setattr(streaming, "memory_budget", lambda: 100)
    assert streaming.choose_loading("auto", 10, 16, 2).stream
    assert not streaming.choose_loading("never", 10**9, 224, 2).stream
    assert streaming.choose_loading("always", 1, 16, 2).to_dict()["mode"] == "stream"

import io
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from transferkit.data import folders as folders_module
from transferkit.data import load_dataset, load_folder
from transferkit.errors import UserError


def _png(color, mode="RGB", size=(12, 10), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format=fmt)
    return buf.getvalue()


def make_folder(root, classes=("cat", "dog", "fox"), per_class=4, splits=("train", "val")):
    for split in splits:
        for c, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(per_class):
                (d / f"{i}.png").write_bytes(_png((40 * c + i, 10, 200)))
    return root


def test_split_layout_with_mixed_formats_and_a_corrupt_file(tmp_path):
    root = make_folder(tmp_path / "data")
    cat = root / "train" / "cat"
    (cat / "gray.jpg").write_bytes(_png(128, "L", fmt="JPEG"))
    (cat / "pal.gif").write_bytes(_png(3, "P", fmt="GIF"))
    (cat / "a.bmp").write_bytes(_png((1, 2, 3), fmt="BMP"))
    (cat / "a.webp").write_bytes(_png((1, 2, 3), fmt="WEBP"))
    (cat / "alpha.png").write_bytes(_png((1, 2, 3, 0), "RGBA"))
    (cat / "cmyk.jpg").write_bytes(_png((0, 0, 0, 0), "CMYK", fmt="JPEG"))
    (cat / "deep.tif").write_bytes(_png(65535, "I;16", fmt="TIFF"))
    (cat / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (cat / "empty.png").write_bytes(b"")
    (cat / ".hidden.png").write_bytes(_png((0, 0, 0)))
    (cat / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match="skipped 2 file"):
        data = load_folder(root, cache_dir=tmp_path / "cache")
    assert data.class_names == ("cat", "dog", "fox")
    # Read from the cache next time, the bad files are still there: said again, with a readable reason
    with pytest.warns(UserWarning, match=r"skipped 2 file.*broken.jpg: not an image Pillow can identify"):
        assert load_folder(root, cache_dir=tmp_path / "cache").skipped == data.skipped
    assert any(s.endswith("not an image Pillow can identify") for s in data.skipped)
    x, y = data.splits["train"]
    assert x.shape == (19, 10, 12, 3) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [11, 4, 4]
    assert sorted(s.split(":")[0] for s in data.skipped) == ["train/cat/broken.jpg", "train/cat/empty.png"]
    # cat's files in sorted order: 0-3.png, a.bmp, a.webp, alpha.png, cmyk.jpg, deep.tif, gray.jpg, pal.gif
    assert (x[6] == 255).all()  # fully transparent pixels composed on white
    assert (x[8] == 255).all()  # 16-bit white scaled to 8-bit white
    assert abs(int(x[9].mean()) - 128) <= 2 and x[9].shape == (10, 12, 3)  # grayscale JPEG as RGB


def test_single_folder_is_split_stratified(tmp_path):
    root = tmp_path / "flat"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(10):
            (root / c / f"{i}.png").write_bytes(_png(i * 20, "L"))
    data = load_folder(root, val_fraction=0.3)
    assert np.bincount(data.splits["val"][1]).tolist() == [3, 3]
    assert np.bincount(data.splits["train"][1]).tolist() == [7, 7]
    assert data.splits["train"][0].shape[1:] == (10, 12)  # grayscale stays one channel


def test_zip_and_tar_read_the_same_as_the_folder(tmp_path):
    root = make_folder(tmp_path / "set")
    reference = load_folder(root)
    zpath = tmp_path / "set.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for f in sorted(root.rglob("*.png")):
            z.write(f, f"wrapper/{f.relative_to(root)}")
    tpath = tmp_path / "set.tar.gz"
    with tarfile.open(tpath, "w:gz") as t:
        t.add(root, "set")
    for archive in (zpath, tpath):
        data = load_folder(archive)
        for split in ("train", "val"):
            assert np.array_equal(data.splits[split][0], reference.splits[split][0]), archive
            assert np.array_equal(data.splits[split][1], reference.splits[split][1]), archive


@pytest.mark.parametrize("member", ["../evil/x.png", "/abs/x.png"])
def test_zip_members_outside_are_refused(tmp_path, member):
    path = tmp_path / "bad.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("train/a/1.png", _png((1, 1, 1)))
        z.writestr(member, _png((1, 1, 1)))
    with pytest.raises(UserError, match="points outside the archive"):
        load_folder(path)


def test_tar_link_outside_is_refused(tmp_path):
    path = tmp_path / "bad.tar"
    with tarfile.open(path, "w") as t:
        info = tarfile.TarInfo("train/a/link.png")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        t.addfile(info)
    with pytest.raises(UserError, match="points outside the archive"):
        load_folder(path)


def test_truncated_zip(tmp_path):
    root = make_folder(tmp_path / "set")
    zpath = tmp_path / "set.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for f in root.rglob("*.png"):
            z.write(f, str(f.relative_to(root)))
    zpath.write_bytes(zpath.read_bytes()[:200])
    with pytest.raises(UserError, match="not a readable zip archive"):
        load_folder(zpath)


@pytest.mark.parametrize("setup, message", [
    (lambda r: (r / "val" / "wolf").mkdir() or (r / "val" / "wolf" / "1.png").write_bytes(_png((1, 1, 1))),
     "wolf are not in train/"),
    (lambda r: (r / "train" / "Cat").mkdir() or (r / "train" / "Cat" / "1.png").write_bytes(_png((1, 1, 1))),
     "differ only by case"),
    (lambda r: [f.write_bytes(b"garbage") for f in (r / "train" / "fox").iterdir()],
     "fox have no readable training images"),
])
@pytest.mark.filterwarnings("ignore:.*skipped")
def test_folder_errors(tmp_path, setup, message):
    root = make_folder(tmp_path / "set")
    setup(root)
    with pytest.raises(UserError, match=message):
        load_folder(root)


def test_single_class_and_empty(tmp_path):
    make_folder(tmp_path / "one", classes=("only",))
    with pytest.raises(UserError, match="only one class"):
        load_folder(tmp_path / "one")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images found"):
        load_folder(tmp_path / "empty")


def test_decoded_arrays_are_cached_and_invalidated(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "set")
    cache = tmp_path / "cache"
    first = load_folder(root, cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(folders_module, "decode_image", no_decoding)
    again = load_folder(root, cache_dir=cache)
    assert np.array_equal(again.splits["train"][0], first.splits["train"][0])
    monkeypatch.undo()
    (root / "train" / "cat" / "new.png").write_bytes(_png((9, 9, 9)))  # a change invalidates the cache
    changed = load_folder(root, cache_dir=cache)
    assert len(changed.splits["train"][1]) == len(first.splits["train"][1]) + 1


def test_run_dataset_from_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = make_folder(tmp_path / "shapes", classes=("a", "b", "c", "d"), splits=("train", "test"))
    data = load_dataset(str(root))
    assert data.class_names == ("a", "b", "c", "d") and data.x_test.shape[0] == 16
    assert data.image_shape == (3, 10, 12)


def test_cover_keeps_the_aspect_ratio():
    from transferkit.data.folders import decode_image

    img = np.zeros((10, 40, 3), np.uint8)
    img[:, 15:25] = 255  # a white bar in the middle of a wide image
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    stretched = decode_image(buf.getvalue(), (10, 10), 3)
    covered = decode_image(buf.getvalue(), (10, 10), 3, cover=True)
    assert covered.shape == stretched.shape == (10, 10, 3)
    assert covered[:, 5].min() == 255 and covered[:, 0].max() == 255 and covered[:, 0].min() == 255
    assert stretched[:, 0].max() == 0  # stretched: the bar is squeezed into the middle

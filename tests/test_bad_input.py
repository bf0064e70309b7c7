"""Bad input, case by case: non-zero exit, one line naming the file or option and the fix, no traceback,
nothing written outside the run folder."""

import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import make_arrays
from PIL import Image

from transferkit.cli import main


def png(color=(10, 200, 30), size=(8, 8), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def image_folder(root: Path, classes=("ant", "bee", "cat", "dog"), per_class=3, splits=("train", "val")) -> Path:
    for split in splits:
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                (root / split / c / f"{i}.png").write_bytes(png((i * 40, 20, 20)))
    return root


def npz(root: Path, **changes) -> Path:
    arrays = {**make_arrays(), **changes}
    path = root / "data.npz"
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def zip_of(root: Path, members: dict[str, bytes]) -> Path:
    path = root / "data.zip"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def tar_of(root: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    path = root / "data.tar"
    with tarfile.open(path, "w") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            t.addfile(info)
    return path


def written(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def resnet18_file(root: Path) -> Path:
    import torch
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), root / "r18.pth")
    return root / "r18.pth"


def without_images(root: Path, cls: str) -> Path:
    for f in (root / "train" / cls).iterdir():
        f.unlink()
    return root


def truncated(path: Path, keep: int) -> Path:
    path.write_bytes(path.read_bytes()[:keep])
    return path


GOOD = {f"train/{c}/{i}.png": png((i * 40, 9, 9)) for c in ("ant", "bee") for i in range(3)}


def bomb(root: Path) -> Path:
    image_folder(root / "set", classes=("ant", "bee"))
    Image.new("1", (14000, 14000)).save(root / "set" / "train" / "ant" / "big.png")  # 196 Mpixel, small file
    return root / "set"


# (name, setup(tmp) -> CLI arguments after "run", fragment expected in the one-line error)
CASES = [
    ("missing path", lambda t: ["mnist", "--data", str(t / "nope.npz")], "nope.npz: no such file or folder"),
    ("missing folder data set", lambda t: [str(t / "photos")],
     "photos: no such file or folder; DATASET is mnist, cifar10, or a folder of class folders"),
    ("npz that is text", lambda t: ["mnist", "--data", str(written(t / "fake.npz", b"hello, not numpy"))],
     "fake.npz: not a readable .npz file (not a zip of arrays)"),
    ("folder where a file is expected", lambda t: (t / "d").mkdir() or ["mnist", "--data", str(t / "d")],
     "no train-images-idx3-ubyte"),
    ("file where a folder is expected", lambda t: [str(written(t / "x.txt", b"hi"))],
     "x.txt: not a folder, .zip or .tar(.gz)"),
    ("npz wrong keys", lambda t: ["mnist", "--data", str(npz(t, x_test=None))], "missing key(s) x_test"),
    ("npz wrong shapes", lambda t: ["mnist", "--data", str(npz(t, x_train=np.zeros((200, 5), np.uint8)))],
     "x_train has shape (200, 5)"),
    ("npz wrong dtype", lambda t: ["mnist", "--data", str(npz(t, x_train=np.zeros((200, 28, 28), np.float64)))],
     "x_train has dtype float64"),
    ("npz labels out of range", lambda t: ["mnist", "--data", str(npz(t, y_test=np.full(100, 12, np.uint8)))],
     "y_test has labels from 12 to 12"),
    ("truncated npz", lambda t: ["mnist", "--data", str(truncated(npz(t), 3000))], "not a readable .npz file"),
    ("truncated zip", lambda t: [str(truncated(zip_of(t, GOOD), 300))], "not a readable zip archive"),
    ("truncated tar", lambda t: [str(truncated(tar_of(t, GOOD), 1500))], "truncated"),
    ("empty data set", lambda t: (t / "empty").mkdir() or [str(t / "empty")], "no images found"),
    ("class folder with no images", lambda t: [str(without_images(image_folder(t / "set"), "cat"))],
     "class folder(s) cat hold no images"),
    ("single class", lambda t: [str(image_folder(t / "set", classes=("ant",)))], "only one class"),
    ("three classes: one for the default source", lambda t: [str(image_folder(t / "set", classes=("ant", "bee", "cow")))],
     "--source (by default, half of the 3 classes) holds only ant; a classifier needs 2 classes or more"),
    ("class in val not in train",
     lambda t: (image_folder(t / "set"), image_folder(t / "set", classes=("eel",), splits=("val",)))
     and [str(t / "set")], "eel are not in train/"),
    ("class names differing by case",
     lambda t: (image_folder(t / "set"), image_folder(t / "set", classes=("Ant",))) and [str(t / "set")],
     "Ant, ant differ only by case"),
    ("overlapping classes", lambda t: ["mnist", "--source", "0-4", "--target", "4-9"], "share class(es) 4"),
    ("unknown class", lambda t: ["mnist", "--target", "5-9,ten"], "--target: unknown class 'ten'"),
    ("empty class list", lambda t: ["mnist", "--source", ","], "--source is empty"),
    ("image size of mnist", lambda t: ["mnist", "--image-size", "16"], "--image-size is for image folders; MNIST's"),
    ("corrupt, empty and mislabelled images only",
     lambda t: [str(zip_of(t, {**GOOD, "train/cow/a.jpg": b"\xff\xd8garbage", "train/cow/b.png": b"",
                               "train/cow/c.png": b"plain text, not a PNG"}))],
     "cow have no readable training images"),
    ("decompression bomb", lambda t: [str(bomb(t))], "big.png is a decompression bomb"),
    ("zip member with ../", lambda t: [str(zip_of(t, {**GOOD, "../evil.png": png()}))], "points outside the archive"),
    ("zip member with absolute path", lambda t: [str(zip_of(t, {**GOOD, "/etc/evil.png": png()}))],
     "points outside the archive"),
    ("tar link outside", lambda t: [str(tar_of(t, GOOD, links={"train/ant/x.png": "../../../etc/passwd"}))],
     "points outside the archive"),
    ("tar member with ../", lambda t: [str(tar_of(t, {**GOOD, "../x.png": png()}))], "points outside the archive"),
    ("out folder not a run", lambda t: ["mnist", "--out", str(written(t / "out" / "notes.txt", b"mine").parent)],
     "folder exists and is not empty; choose a new folder, or --force"),
    ("resume a folder that is no run", lambda t: (t / "r").mkdir() or ["mnist", "--resume", str(t / "r")],
     "not a transferkit run folder"),
    ("epochs 0", lambda t: ["mnist", "--epochs", "0"], "--epochs must be at least 1"),
    ("negative batch size", lambda t: ["mnist", "--batch-size", "-1"], "--batch-size must be at least 1"),
    ("lr nan", lambda t: ["mnist", "--lr", "nan"], "--lr must be positive"),
    ("val fraction", lambda t: ["mnist", "--val-fraction", "1.5"], "--val-fraction must be between 0 and 1"),
    ("negative seed", lambda t: ["mnist", "--seed", "-1"], "--seed must be 0 or more"),
    ("not a choice", lambda t: ["mnist", "--head", "foo"], "Invalid value for '--head'"),
    ("not a number", lambda t: ["mnist", "--epochs", "abc"], "'abc' is not a valid integer"),
    ("kernel too large for the images", lambda t: ["mnist", "--kernel-size", "15", "--out", str(t / "r")],
     "too small for two 15x15 convolutions"),
    ("single class in a flat folder", lambda t: [str(image_folder(t / "set", classes=("ant",), splits=("",)))],
     "only one class (ant)"),
    ("finetune limit 0", lambda t: ["finetune", str(image_folder(t / "set")), "--limit", "0"],
     "--limit must be at least 1"),
    ("finetune weights of another architecture",
     lambda t: ["finetune", str(image_folder(t / "set")), "--backbone", "resnet50", "--weights", str(resnet18_file(t))],
     "does not fit resnet50"),
    ("finetune weights that are no weights",
     lambda t: ["finetune", str(image_folder(t / "set")), "--weights", str(written(t / "w.pt", b"text"))],
     "not a readable weights file (not a state dict of tensors saved by torch.save"),
    ("finetune weights that are a picture",
     lambda t: ["finetune", str(image_folder(t / "set")), "--weights", str(written(t / "w.jpg", png()))],
     "not a readable weights file (not a state dict of tensors saved by torch.save"),
    ("finetune weights file missing", lambda t: ["finetune", str(image_folder(t / "set")), "--weights", "no.pt"],
     "--weights no.pt: no such file or folder; give imagenet, none, a weights file or a finetune run folder"),
    ("predict on a folder that is no run", lambda t: ["predict", str(t), "x.png"], "not a transferkit run folder"),
    ("export a folder that is no run", lambda t: ["export", str(t)], "not a transferkit run folder"),
    ("export an unfinished run",  # what a killed run leaves: results.json from its start, status running
     lambda t: (written(t / "r" / "results.json", b'{"experiment": "finetune", "model": "weights/model.safetensors"}'),
                written(t / "r" / "status.json", b'{"status": "running"}')) and ["export", str(t / "r")],
     "the run is not finished (status.json says running); resume it with --resume, or export a complete run"),
    ("export to an unknown format", lambda t: ["export", str(t), "--format", "tflite"],
     "Invalid value for '--format': 'tflite' is not one of 'onnx', 'torchscript'"),
]


@pytest.mark.parametrize("name, setup, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input(tmp_path, monkeypatch, capsys, name, setup, fragment):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    args = setup(tmp_path)
    before = set(tmp_path.rglob("*"))
    command = args if args[0] in ("finetune", "predict", "export") else ["run", *args]
    if command[0] == "run" and "--epochs" not in args:
        command += ["--limit", "50", "--epochs", "1"]
    with pytest.raises(SystemExit) as exit_info:
        main(command)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert fragment in err, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    new = {p for p in set(tmp_path.rglob("*")) - before if "cache" not in p.parts}
    assert not new, f"wrote {new}"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file(tmp_path, capsys):
    path = npz(tmp_path)
    path.chmod(0)
    with pytest.raises(SystemExit):
        main(["run", "mnist", "--data", str(path)])
    assert "permission denied" in capsys.readouterr().err


def test_npz_with_a_channel_axis_runs(tmp_path):
    arrays = make_arrays()
    path = npz(tmp_path, x_train=arrays["x_train"][..., None], x_test=arrays["x_test"][..., None])
    main(["run", "mnist", "--data", str(path), "--epochs", "1", "--out", str(tmp_path / "run"), "--no-scratch"])
    assert (tmp_path / "run" / "samples.png").is_file()


def test_damaged_image_cache_is_rebuilt(tmp_path):
    from transferkit.data import load_folder

    root = image_folder(tmp_path / "set")
    cache = tmp_path / "cache"
    first = load_folder(root, cache_dir=cache)
    [entry] = cache.glob("*.npz")
    entry.write_bytes(b"")
    again = load_folder(root, cache_dir=cache)
    assert np.array_equal(first.splits["train"][0], again.splits["train"][0])


def test_predict_fails_when_no_file_is_readable(tmp_path, capsys):
    main(["run", "mnist", "--limit", "100", "--epochs", "1", "--no-scratch", "--out", str(tmp_path / "run")])
    with pytest.raises(SystemExit) as e:
        main(["predict", str(tmp_path / "run"), str(tmp_path / "missing.png")])
    assert e.value.code == 1 and "1 of 1 file(s) could not be read" in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(Exception) as e:
        main(["--debug", "run", "mnist", "--data", str(tmp_path / "nope.npz")])
    assert "no such file" in str(e.value)


def test_unicode_and_non_utf8_names_work(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = image_folder(tmp_path / "données", classes=("café", "日本", "x", "y"), per_class=4)
    raw = os.fsencode(root / "train" / "x") + b"/\xff\xfe.png"  # not valid UTF-8
    with open(raw, "wb") as f:
        f.write(png())
    main(["run", str(root), "--epochs", "1", "--out", str(tmp_path / "run")])
    import json

    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["phases"]["source"]["classes"] == ["café", "x"]
    assert results["phases"]["source"]["train_samples"] == 8 + 1


def test_pickled_weights_are_refused(tmp_path):
    import pickle

    from transferkit import UserError, load_model

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    (tmp_path / "m.safetensors").write_bytes(pickle.dumps(Evil()))
    (tmp_path / "m.json").write_text('{"architecture": "seed_cnn", "model_config": {}, "in_channels": 1, '
                                     '"image_size": [28, 28], "num_classes": 5}')
    with pytest.raises(UserError, match="cannot load these weights"):
        load_model(tmp_path / "m.safetensors")
    assert not (tmp_path / "pwned").exists()


def test_a_file_that_fails_to_decode_is_one_warning_line_on_every_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data = written(image_folder(tmp_path / "set") / "train" / "ant" / "bad.png", b"plain text, not a PNG").parents[2]
    for run in ("first", "second"):  # the second reads the decoded images from the cache
        main(["run", str(data), "--epochs", "1", "--no-scratch", "--quiet", "--out", str(tmp_path / run)])
        err = capsys.readouterr().err
        assert "warning: " in err and "skipped 1 file(s) that could not be decoded: train/ant/bad.png: not an image " \
            "Pillow can identify" in err and "UserWarning" not in err, err
        results = json.loads((tmp_path / run / "results.json").read_text())
        assert results["dataset"]["skipped"] == ["train/ant/bad.png: not an image Pillow can identify"]

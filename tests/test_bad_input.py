"""Bad input, case by case: non-zero exit, one line naming the file or option and the fix, no traceback,
nothing written outside the run folder."""

import gzip
import io
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import make_arrays
from PIL import Image

from transferkit.cli import main
from transferkit.errors import UserError


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
    (".tar.gz that is no archive", lambda t: [str(written(t / "photos.tar.gz", b"plain text, not an archive"))],
     "photos.tar.gz: not a readable tar archive (not a tar file, nor one compressed with gzip, bzip2 or xz)"),
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
    ("lr nan", lambda t: ["mnist", "--lr", "nan"], "--lr must be a finite number, got nan"),
    ("lr inf", lambda t: ["mnist", "--lr", "inf"], "--lr must be a finite number, got inf"),
    ("train fraction inf", lambda t: ["mnist", "--train-fraction", "inf"], "--train-fraction must be a finite number"),
    ("seed beyond 32 bits", lambda t: ["mnist", "--seed", str(2**60), "--out", str(t / "r")],
     "--seed must be between 0 and 4294967295"),
    ("image size beyond the bound", lambda t: [str(image_folder(t / "set")), "--image-size", "100000", "--out", str(t / "r")],
     "--image-size must be between 8 and 2048, got 100000"),
    ("val fraction", lambda t: ["mnist", "--val-fraction", "1.5"], "--val-fraction must be between 0 and 1"),
    ("negative seed", lambda t: ["mnist", "--seed", "-1"], "--seed must be between 0 and"),
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
     lambda t: (written(t / "r" / "results.json", b'{"experiment": "finetune", "config": {}, "phases": {}, '
                                                       b'"model": "weights/model.safetensors"}'),
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
    with pytest.warns(UserWarning, match=r"cache entry discarded \(unreadable\); decoding the images again"):
        again = load_folder(root, cache_dir=cache)
    assert np.array_equal(first.splits["train"][0], again.splits["train"][0])


def test_predict_fails_when_no_file_is_readable(tmp_path, capsys):
    main(["run", "mnist", "--limit", "100", "--epochs", "1", "--no-scratch", "--out", str(tmp_path / "run")])
    with pytest.raises(SystemExit) as e:
        main(["predict", str(tmp_path / "run"), str(tmp_path / "missing.png")])
    assert e.value.code == 1 and "error: 1 of 1 file(s) could not be read" in capsys.readouterr().err


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
                                     '"image_size": [28, 28], "num_classes": 2, "class_names": ["a", "b"], '
                                     '"preprocessing": {"kind": "scale"}}')
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


BOMB_MIB = 520  # just beyond transferkit's 512 MiB per member; 0.5 MB on disk


def deflated_zeros(mib: int) -> tuple[bytes, int]:
    """A raw deflate stream of `mib` MiB of zeros and its CRC-32, made without compressing them all: after a
    full flush the compressor starts afresh, so every MiB compresses to the same bytes."""
    zeros, crc = bytes(1 << 20), 0
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    for _ in range(mib):
        crc = zlib.crc32(zeros, crc)
    return block * mib + zlib.compressobj(9, zlib.DEFLATED, -15).flush(), crc


def zip_bomb(root: Path) -> Path:
    """GOOD's members and one that inflates to BOMB_MIB MiB, as zip writes them (local headers, central
    directory), with the bomb's stream made by deflated_zeros."""
    members = {}
    for name, data in GOOD.items():
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        members[name] = (c.compress(data) + c.flush(), zlib.crc32(data), len(data))
    members["train/bee/bomb.png"] = (*deflated_zeros(BOMB_MIB), BOMB_MIB << 20)
    local, central = b"", b""
    for name, (stream, crc, size) in members.items():
        fields = struct.pack("<HHHHHIIIHH", 20, 0, 8, 0, 0x21, crc, len(stream), size, len(name), 0)
        central += struct.pack("<IH", 0x02014B50, 20) + fields + struct.pack("<HHHII", 0, 0, 0, 0, len(local))
        central += name.encode()
        local += struct.pack("<I", 0x04034B50) + fields + name.encode() + stream
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(local), 0)
    path = root / "bomb.zip"
    path.write_bytes(local + central + end)
    return path


def tar_gz_bomb(root: Path) -> Path:
    """A .tar.gz of GOOD's members and one of BOMB_MIB MiB of zeros, as three gzip members (gzip reads them as
    one stream): the tar headers and small files, the zeros (by deflated_zeros), the end of the archive."""
    head = b""
    for name, data in GOOD.items():
        info = tarfile.TarInfo(name)
        info.size = len(data)
        head += info.tobuf() + data + bytes(-len(data) % 512)
    info = tarfile.TarInfo("train/bee/bomb.png")
    info.size = BOMB_MIB << 20
    stream, crc = deflated_zeros(BOMB_MIB)
    zeros = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + stream + struct.pack("<II", crc, (BOMB_MIB << 20) % 2**32)
    path = root / "bomb.tar.gz"
    path.write_bytes(gzip.compress(head + info.tobuf()) + zeros + gzip.compress(bytes(1024)))
    return path


def folder_with_a_huge_file(root: Path) -> Path:
    """A folder data set with a sparse 520 MiB file named as an image (no disk space taken)."""
    for name, data in GOOD.items():
        written(root / "set" / name, data)
    with open(root / "set" / "train" / "bee" / "bomb.png", "wb") as f:
        f.truncate(BOMB_MIB << 20)
    return root / "set"


def load_folder_limited(path: Path, memory: int = 1 << 30) -> subprocess.CompletedProcess:
    """load_folder(path) in a process whose address space is capped: a regression fails, the machine stays up."""
    code = ("import sys\nfrom transferkit.data import load_folder\nfrom transferkit import UserError\n"
            "try:\n    load_folder(sys.argv[1])\nexcept UserError as e:\n    sys.exit(f'error: {e}')\n")

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120,
                          preexec_fn=cap)


@pytest.mark.parametrize("make", [zip_bomb, tar_gz_bomb, folder_with_a_huge_file], ids=["zip", "tar.gz", "folder"])
def test_a_member_that_inflates_beyond_the_limit_is_refused_by_name(tmp_path, make):
    done = load_folder_limited(make(tmp_path))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "bomb.png" in done.stderr and "holds 520 MiB, beyond the 512 MiB allowed for one image" in done.stderr


@pytest.fixture(scope="module")
def mnist_run(tiny_run) -> Path:
    return tiny_run  # the tests that change it change a copy


def edited_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def backbone_run(root: Path, **preprocessing) -> Path:
    """A run folder whose model description is a backbone's with these preprocessing values (and weights that
    are never read: the description is refused first)."""
    written(root / "weights" / "model.safetensors", b"never read")
    spec = {"architecture": "backbone", "backbone": "resnet18", "head": {"units": 8, "dropout": 0.5},
            "num_classes": 2, "class_names": ["a", "b"],
            "preprocessing": {"kind": "normalize", "resize": 256, "crop": 224, "mean": [0.5] * 3, "std": [0.2] * 3,
                              **preprocessing}}
    written(root / "weights" / "model.json", json.dumps(spec).encode())
    written(root / "results.json", json.dumps({"model": "weights/model.safetensors", "config": {}, "phases": {}}).encode())
    return root


SPEC_CASES = [
    ("filters 1e9", lambda s: s["model_config"].update(filters=10**9), "model_config.filters must be an integer from 1 to 65536"),
    ("negative dense units", lambda s: s["model_config"].update(dense_units=-5), "model_config.dense_units must be an integer"),
    ("filters that disagree with the tensors", lambda s: s["model_config"].update(filters=64),
     "does not match transfer.json (tensor classifier.dense1.weight is of shape [128, 4608] in the weights, of shape "
     "[128, 9216] in the description)"),
    ("class names not a list", lambda s: s.update(class_names="56789"), "class_names must be a list of 5 strings"),
    ("fewer class names than classes", lambda s: s.update(class_names=["5", "6"]), "class_names must be a list of 5 strings"),
    ("num classes a string", lambda s: s.update(num_classes="5"), "num_classes must be an integer"),
    ("image size beyond Pillow's limit", lambda s: s.update(image_size=[60000, 60000]), "image_size must be [height, width]"),
    ("unknown architecture", lambda s: s.update(architecture="vit"), "architecture must be one of seed_cnn, backbone"),
    ("description not an object", lambda s: (s.clear(), s.update({"": []})), "architecture is missing"),
]


@pytest.mark.parametrize("name, edit, fragment", SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_predict_checks_the_model_description_before_building(mnist_run, tmp_path, capsys, name, edit, fragment):
    run = tmp_path / "run"
    shutil.copytree(mnist_run, run)
    edited_json(run / "weights" / "transfer.json", edit)
    with pytest.raises(SystemExit) as e:
        main(["predict", str(run), str(tmp_path / "any.png")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("preprocessing, fragment", [
    ({"resize": 0}, "preprocessing.resize must be an integer from 1 to 2560"),
    ({"resize": 60000}, "preprocessing.resize must be an integer from 1 to 2560"),
    ({"crop": 300}, "preprocessing.crop must be an integer from 1 to 256"),
    ({"std": [0, 0, 0]}, "preprocessing.std must be a list of 3 numbers"),
    ({"mean": "imagenet"}, "preprocessing.mean must be a list of 3 numbers"),
], ids=["resize 0", "resize 60000", "crop beyond resize", "std 0", "mean a string"])
def test_predict_checks_a_backbone_description(tmp_path, capsys, preprocessing, fragment):
    with pytest.raises(SystemExit) as e:
        main(["predict", str(backbone_run(tmp_path / "run", **preprocessing)), str(tmp_path / "any.png")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("model", [5, None, "../../elsewhere.safetensors"])
def test_predict_checks_the_model_named_in_results_json(mnist_run, tmp_path, capsys, model):
    run = tmp_path / "run"
    shutil.copytree(mnist_run, run)
    edited_json(run / "results.json", lambda r: r.update(model=model))
    with pytest.raises(SystemExit) as e:
        main(["predict", str(run), str(tmp_path / "any.png")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and '"model" must name a file in the run folder' in err, err


def test_predict_reports_a_fifo_on_its_row_without_blocking(mnist_run, tmp_path, capsys):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    digit = written(tmp_path / "digit.png", png(0, (28, 28), "L"))
    main(["predict", str(mnist_run), str(fifo), str(digit), "--csv"])  # blocked forever before
    out = capsys.readouterr().out
    assert f"{fifo},,,,OSError: not a regular file (a FIFO)" in out and f"{digit},1," in out, out


def test_a_diverging_loss_fails_the_run_with_one_line_and_strict_json(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(["run", "mnist", "--limit", "100", "--epochs", "1", "--lr", "1e30", "--out", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert "loss after epoch 1 became nan: training diverged at learning rate 1e+30; try a smaller --lr" in err, err
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "failed" and status["phase"] == "source" and "diverged" in status["error"]


def test_results_json_is_strict_json(tmp_path):
    from transferkit.reporting import write_results

    history = [{"epoch": 1, "loss": 0.5, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.5, "seconds": 1.0}]
    write_results(tmp_path, {"phases": {"a": {"test_loss": 1.0, "history": history}}})
    text = (tmp_path / "results.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    # a non-finite number is never written, not even as null: refused, naming the field; the old file stays
    with pytest.raises(UserError, match=r"field phases.a.test_loss is inf"):
        write_results(tmp_path, {"phases": {"a": {"test_loss": float("inf"), "history": history}}})
    with pytest.raises(UserError, match=r"field phases.a.history\[0\].loss is nan"):
        write_results(tmp_path, {"phases": {"a": {"test_loss": 1.0, "history": [{**history[0], "loss": float("nan")}]}}})
    assert (tmp_path / "results.json").read_text() == text


def test_a_training_loss_that_becomes_nan_stops_fit_at_that_step():
    import torch

    from transferkit.training import FitPlan, TensorBatches, fit

    model = torch.nn.Linear(4, 2)
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    x[40] = float("nan")  # the batch holding it gives a nan loss
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(UserError, match=r"phase source: the training loss in epoch 1, step \d became nan: training diverged at learning rate 0\.1; try a smaller --lr"):
        fit(model, optimizer, TensorBatches(x, y, 16, seed=0), x, y, FitPlan(epochs=2, phase="source"))


def test_class_names_are_data_whatever_their_characters(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = image_folder(tmp_path / "set", classes=("$x^$", "ant", "bee", "cow"), per_class=4)
    raw = os.fsencode(root / "train") + b"/d\xffg"  # a class folder whose name is not UTF-8
    for split in ("train", "val"):
        os.makedirs(raw.replace(b"/train/", f"/{split}/".encode()))
        for i in range(4):
            with open(raw.replace(b"/train/", f"/{split}/".encode()) + f"/{i}.png".encode(), "wb") as f:
                f.write(png((i * 50, 0, 0)))
    main(["run", str(root), "--epochs", "1", "--quiet", "--out", str(tmp_path / "run")])  # crashed in setup before
    results = json.loads((tmp_path / "run" / "results.json").read_text(encoding="utf-8"))
    assert results["phases"]["source"]["classes"] == ["$x^$", "ant"]
    assert results["phases"]["transfer"]["classes"] == ["bee", "cow", "d\\xffg"]
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "complete"


def test_a_cifar_batch_with_a_key_that_is_not_utf8_is_read(tmp_path):
    import pickle

    from transferkit.data.cifar import unpickle_arrays

    batch = unpickle_arrays(pickle.dumps({b"\xff\xfe": b"x", b"labels": [1]}), tmp_path / "data_batch_1")
    assert batch["labels"] == [1] and "\\xff\\xfe" in batch  # crashed with UnicodeDecodeError before


def test_exif_orientation_is_applied_and_other_images_keep_their_pixels():
    from transferkit.data.folders import decode_image

    img = Image.new("RGB", (8, 4), (200, 10, 10))
    img.putpixel((0, 0), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    img.save(buf, format="PNG", exif=exif)
    turned = decode_image(buf.getvalue(), None, 3)
    assert turned.shape == (8, 4, 3) and tuple(turned[0, -1]) == (0, 0, 255)
    plain = io.BytesIO()
    img.save(plain, format="PNG")
    assert np.array_equal(decode_image(plain.getvalue(), None, 3), np.asarray(img))


@pytest.mark.parametrize("text", ["{not json", "[]", "5"])
def test_predict_on_a_damaged_results_json_is_one_line(mnist_run, tmp_path, capsys, text):
    run = tmp_path / "run"
    shutil.copytree(mnist_run, run)
    (run / "results.json").write_text(text)
    with pytest.raises(SystemExit) as e:
        main(["predict", str(run), str(tmp_path / "any.png")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "results.json: " in err and len(err.strip().splitlines()) == 1, err

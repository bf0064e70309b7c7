"""Hostile input to predict and export (issue 35, items 2, 3, 4 and 7): each class of bad input is one line
naming the file and the field, memory stays bounded by what the checks allow, and a failed write keeps the
previous model and sidecar together."""

import errno
import json
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from PIL import Image

from transferkit import UserError, export, predict
from transferkit.atomic import cannot_write, write_atomic, write_atomic_files
from transferkit.cli import main
from transferkit.data.archive import MAX_FILE_BYTES
from transferkit.data.folders import decode_image
from transferkit.deploy import check as check_module
from transferkit.deploy.check import compare, given_images
from transferkit.inference.formats import EXTRA_FILE
from transferkit.inference.predict import load_classifier
from transferkit.models.spec import MAX_RESIZE, MAX_SIDE

SIDE, CLASSES = 8, ["ant", "bee", "cat"]


def description(**changes) -> dict:
    """What transferkit export writes for an 8 x 8 RGB backbone input (resize 10, crop 8), with `changes`."""
    described = {"class_names": CLASSES,
                 "input": {"name": "images", "dtype": "uint8", "layout": "NHWC", "shape": ["batch", SIDE, SIDE, 3]},
                 "preprocessing": {"kind": "normalize", "resize": 10, "crop": SIDE, "mean": [0.5] * 3, "std": [0.2] * 3}}
    for key, value in changes.items():
        top, _, inner = key.partition(".")
        if inner:
            described[top] = {**described[top], inner: value}
        elif value is None:
            described.pop(top)
        else:
            described[top] = value
    return described


def onnx_model(path: Path, meta: dict, batch: int | str = "batch", side: int = SIDE, raw: dict | None = None) -> Path:
    """A small ONNX graph (uint8 NHWC -> softmax of a linear map, 3 outputs) with `meta` as its metadata
    (each value JSON, or the text in `raw`); `batch` fixed makes any other batch size fail in ONNX Runtime."""
    weights = np.random.default_rng(0).normal(size=(side * side * 3, len(CLASSES))).astype(np.float32) / 100
    nodes = [helper.make_node("Cast", ["images"], ["x"], to=TensorProto.FLOAT),
             helper.make_node("Reshape", ["x", "flat_shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.UINT8, [batch, side, side, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [batch, len(CLASSES)])],
        [helper.make_tensor("flat_shape", TensorProto.INT64, [2], [-1, side * side * 3]),
         helper.make_tensor("w", TensorProto.FLOAT, weights.shape, weights.flatten())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in {**{k: json.dumps(v) for k, v in meta.items()}, **(raw or {})}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


class Tiny(torch.nn.Module):
    def __init__(self, classes: int = 3):
        super().__init__()
        self.linear = torch.nn.Linear(SIDE * SIDE * 3, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.linear(images.float().flatten(1) / 255), dim=1)


def torchscript_model(path: Path, meta: dict | None, classes: int = 3) -> Path:
    with warnings.catch_warnings():  # torch.jit is deprecated; it is what transferkit export writes
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(Tiny(classes), torch.zeros(2, SIDE, SIDE, 3, dtype=torch.uint8))
        torch.jit.save(traced, str(path), _extra_files={EXTRA_FILE: json.dumps(meta)} if meta is not None else {})
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (12 + i, 14, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return root


def one_line_error(capsys, *args) -> str:
    with pytest.raises(SystemExit) as e:
        main(list(map(str, args)))
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1, err
    return err


# Item 2: predict on an exported file checks its description as check_spec checks a run's.
BAD_DESCRIPTIONS = [
    ("fewer names than outputs", description(class_names=["ant", "bee"]), "class_names must be a list of 3 strings"),
    ("names a number", description(class_names=5), "class_names must be a list of 3 strings"),
    ("names null", description(class_names=None) | {"class_names": None}, "class_names must be a list of 3 strings"),
    ("names a string", description(class_names="abc"), "class_names must be a list of 3 strings"),
    ("100,003 names", description(class_names=[str(i) for i in range(100_003)]), "class_names must be a list of 3"),
    ("unknown resize kind", description(**{"preprocessing.kind": "lanczos"}),
     "preprocessing.kind must be one of normalize, scale"),
    ("resize 100000", description(**{"preprocessing.resize": 100_000}),
     f"preprocessing.resize must be an integer from 8 to {MAX_RESIZE}"),
    ("input a number", description(input=5), "input must be a JSON object"),
    ("input shape of 3 numbers", description(**{"input.shape": [SIDE, SIDE, 3]}), "input.shape must be [batch, height"),
    ("input 9 px against a graph of 8", description(**{"input.shape": ["batch", 9, 9, 3]}),
     "its graph takes tensor(uint8) of shape ['batch', 8, 8, 3]"),
    ("input beyond MAX_SIDE", description(**{"input.shape": ["batch", MAX_SIDE + 1, MAX_SIDE + 1, 3]}),
     f"sides of 1 to {MAX_SIDE} px"),
    ("preprocessing missing", description(preprocessing=None), "without transferkit's metadata"),
]


@pytest.mark.parametrize("name, meta, fragment", BAD_DESCRIPTIONS, ids=[c[0] for c in BAD_DESCRIPTIONS])
def test_predict_checks_an_onnx_files_description(tmp_path, photos, capsys, name, meta, fragment):
    path = onnx_model(tmp_path / "model.onnx", meta)
    err = one_line_error(capsys, "predict", path, photos)
    assert fragment in err and str(path) in err, err


def test_onnx_metadata_that_is_not_json_is_one_line(tmp_path, photos, capsys):
    meta = description()
    path = onnx_model(tmp_path / "model.onnx", {k: v for k, v in meta.items() if k != "class_names"},
                      raw={"class_names": "[ant, bee"})
    assert "its metadata class_names is not JSON" in one_line_error(capsys, "predict", path, photos)


def test_a_good_onnx_file_predicts_and_its_run_errors_are_one_line(tmp_path, photos, capsys):
    good = onnx_model(tmp_path / "good.onnx", description())
    rows = predict(good, [photos])
    assert len(rows) == 3 and all(r.error is None and len(r.top) == 3 for r in rows)
    fixed = onnx_model(tmp_path / "fixed.onnx", description(), batch=2)  # takes batches of 2 only
    err = one_line_error(capsys, "predict", fixed, photos)  # 3 images: one batch of 3
    assert f"{fixed}: the model fails on a batch of shape [3, 8, 8, 3]" in err, err


def test_torchscript_files_are_checked_alike(tmp_path, photos, capsys):
    good = torchscript_model(tmp_path / "good.torchscript.pt", description())
    assert [len(r.top) for r in predict(good, [photos])] == [3, 3, 3]
    short = torchscript_model(tmp_path / "short.torchscript.pt", description(), classes=2)  # 2 outputs, 3 names
    assert "outputs of shape [3, 2], not finite probabilities of shape [3, 3]" in one_line_error(
        capsys, "predict", short, photos)
    bad = torchscript_model(tmp_path / "bad.torchscript.pt", description(class_names="abc"))
    assert "class_names must be a list of strings" in one_line_error(capsys, "predict", bad, photos)
    bare = torchscript_model(tmp_path / "bare.pt", None)  # no description inside: its sidecar has it
    assert "its sidecar bare.pt.json cannot be read" in one_line_error(capsys, "predict", bare, photos)
    (tmp_path / "bare.pt.json").write_text(json.dumps(description()))
    assert [len(r.top) for r in predict(bare, [photos])] == [3, 3, 3]
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    assert "not a TorchScript model" in one_line_error(capsys, "predict", tmp_path / "junk.pt", photos)


# Item 3: memory bounded by what the checks allow.
def test_a_file_is_cropped_as_it_is_decoded(tmp_path):
    path = onnx_model(tmp_path / "model.onnx", description(**{"preprocessing.resize": MAX_RESIZE}))
    classifier = load_classifier(path)
    buffer = tmp_path / "wide.png"
    Image.new("RGB", (300, 200), (10, 20, 30)).save(buffer)
    # decoded to MAX_RESIZE px (19 MiB), kept as the 8 px crop the graph takes
    assert classifier.decode(buffer.read_bytes()).shape == (SIDE, SIDE, 3)


def test_a_run_folders_resize_and_crop_are_bounded(tmp_path, capsys):
    # A model.json resize of 9000 was allowed (up to 9459) and cost 695 MiB per image in export, 1.36 GiB in predict.
    for pre, fragment in (({"resize": 9000}, f"preprocessing.resize must be an integer from 1 to {MAX_RESIZE}"),
                          ({"resize": MAX_RESIZE, "crop": MAX_SIDE + 1},
                           f"preprocessing.crop must be an integer from 1 to {MAX_SIDE}")):
        run = tmp_path / str(pre["resize"]) / str(pre.get("crop"))
        (run / "weights").mkdir(parents=True)
        (run / "weights" / "model.safetensors").write_bytes(b"never read")
        spec = {"architecture": "backbone", "backbone": "resnet18", "head": {"units": 8, "dropout": 0.5},
                "num_classes": 2, "class_names": ["a", "b"],
                "preprocessing": {"kind": "normalize", "resize": 256, "crop": 224, "mean": [0.5] * 3,
                                  "std": [0.2] * 3, **pre}}
        (run / "weights" / "model.json").write_text(json.dumps(spec))
        (run / "results.json").write_text(json.dumps({"model": "weights/model.safetensors", "config": {},
                                                     "phases": {}}))
        assert fragment in one_line_error(capsys, "predict", run, tmp_path / "any.png")


def test_the_check_decodes_a_batch_at_a_time(tmp_path):
    path = onnx_model(tmp_path / "model.onnx", description())
    reference = load_classifier(path)
    decoded_before_first_run = []
    calls = {"decode": 0}

    def decode(data):
        calls["decode"] += 1
        return reference.decode(data)

    def runner(x):
        decoded_before_first_run.append(calls["decode"])
        return reference.probabilities(x)

    counting = type(reference)(reference.class_names, reference.size, reference.crop, reference.channels,
                               reference.cover, reference.probabilities)
    object.__setattr__(counting, "decode", decode)
    image = tmp_path / "a.png"
    Image.new("RGB", (20, 20), (1, 2, 3)).save(image)
    images = [(f"{i}.png", image.read_bytes()) for i in range(2 * check_module.BATCH + 3)]
    result = compare(counting, runner, images, "test", SIDE, SIDE)
    assert result.passed and result.checked == len(images)
    assert decoded_before_first_run[0] <= check_module.BATCH  # all 67 were decoded (at resize) before


def test_check_images_are_read_bounded(tmp_path):
    big = tmp_path / "big.png"
    with open(big, "wb") as f:  # sparse: no disk used; read whole before (a 7 GB one: MemoryError)
        f.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(UserError, match="allowed for one image"):
        given_images([big])
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="no such file"):  # not a regular file: never opened, never blocks
        given_images([fifo])


# Item 4: export's output handling.
@pytest.fixture(scope="module")
def seed_run(tiny_run, tmp_path_factory):
    import shutil

    return Path(shutil.copytree(tiny_run, tmp_path_factory.mktemp("runs") / "mnist"))  # exports write into it


def test_export_refuses_outputs_that_cannot_be_files_before_any_work(seed_run, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert "file is a file, not a folder" in one_line_error(
        capsys, "export", seed_run, "--format", "torchscript", "--out", tmp_path / "file" / "model.pt")
    assert "--out '': empty" in one_line_error(capsys, "export", seed_run, "--format", "torchscript", "--out", "")
    (tmp_path / "m.pt.json").mkdir()
    assert "its sidecar" in one_line_error(capsys, "export", seed_run, "--format", "torchscript",
                                           "--out", tmp_path / "m.pt", "--force")


def test_a_forced_export_whose_sidecar_fails_keeps_both_old_files(seed_run, tmp_path, monkeypatch):
    out = tmp_path / "m.pt"
    export(seed_run, "torchscript", out=out)
    sidecar = out.with_name("m.pt.json")
    before = out.read_bytes(), sidecar.read_bytes()
    real = os.replace

    def failing(src, dst):
        if str(dst) == str(sidecar):
            raise OSError(errno.EACCES, "Permission denied")
        real(src, dst)

    monkeypatch.setattr("transferkit.atomic.os.replace", failing)
    with pytest.raises(UserError, match=r"m.pt.json: cannot write \(Permission denied\); the previous version is kept"):
        export(seed_run, "torchscript", out=out, force=True)
    monkeypatch.undo()
    assert (out.read_bytes(), sidecar.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "m.pt.json"]  # no temporaries left


def test_write_failures_advise_by_their_cause(tmp_path):
    target = tmp_path / "f.json"
    assert "Free disk space, then run the command again" in cannot_write(target, OSError(errno.ENOSPC, "No space left"))
    said = cannot_write(target, OSError(errno.EACCES, "Permission denied"))
    assert f"check the permissions of {tmp_path}" in said.lower() and "disk space" not in said
    assert cannot_write(target, OSError(errno.EIO, "Input/output error"), existed=False) == (
        f"{target}: cannot write (Input/output error); nothing was written.")

    def full(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UserError, match="Free disk space"):
        write_atomic(target, full)
    with pytest.raises(UserError, match="nothing was written"):
        write_atomic_files({target: lambda t: t.write_text("a"), tmp_path / "g": full})
    assert list(tmp_path.iterdir()) == []


# Item 7: advice and reports that misled.
def test_export_check_with_only_unreadable_images_says_so(seed_run, tmp_path, capsys):
    for i in range(2):
        (tmp_path / f"{i}.png").write_bytes(b"not an image")
    err = one_line_error(capsys, "export", seed_run, "--format", "torchscript", "--out", tmp_path / "m.pt",
                         "--check", tmp_path)
    assert "none of the 2 image(s) from --check" in err and "could be read (first: " in err, err
    assert "does not match" not in err and not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("mode, pixels", [
    ("F", np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)),  # a float TIFF in [0, 1]: was black
    ("F", np.linspace(-3, 5, 64, dtype=np.float32).reshape(8, 8)),  # any other float range
    ("I", np.linspace(0, 2**20, 64).astype(np.int32).reshape(8, 8)),  # 32-bit integers: was white
], ids=["float 0-1", "float -3 to 5", "int32"])
def test_a_float_or_32_bit_tiff_decodes_to_its_range(tmp_path, mode, pixels):
    path = tmp_path / "x.tif"
    Image.fromarray(pixels, mode).save(path)
    decoded = decode_image(path.read_bytes(), None, 1)
    assert decoded.min() <= 5 and decoded.max() >= 250 and 100 < decoded.mean() < 155


def test_predict_reports_a_named_folder_without_images(tmp_path, photos):
    path = onnx_model(tmp_path / "model.onnx", description())
    (tmp_path / "empty").mkdir()
    rows = predict(path, [photos, tmp_path / "empty"])
    assert len(rows) == 4 and rows[-1].path == str(tmp_path / "empty")
    assert "a folder without image files" in rows[-1].error


def test_the_pixel_limit_warning_in_exports_check_names_the_file(tmp_path, monkeypatch):
    path = onnx_model(tmp_path / "model.onnx", description())
    reference = load_classifier(path)
    image = tmp_path / "huge.png"
    Image.new("RGB", (40, 40), (9, 9, 9)).save(image)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1,600 pixels: warned, decoded
    with pytest.warns(Image.DecompressionBombWarning, match=r"huge\.png: Image size \(1600 pixels\)"):
        result = compare(reference, reference.probabilities, [(str(image), image.read_bytes())], "t", SIDE, SIDE)
    assert result.checked == 1

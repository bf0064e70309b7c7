"""export --int8: a tiny run's int8 file is written, smaller, agrees with fp32, predicts, and a broken
calibration writes nothing."""

import io
import json
import re
from contextlib import redirect_stdout

import onnx
import pytest
from conftest import tiny_finetune
from PIL import Image

from transferkit import UserError, export, predict
from transferkit.cli import main
from transferkit.deploy.quantize import cpu_int8, int8_export
from transferkit.inference.predict import load_classifier


@pytest.fixture(scope="module")
def tuned(deploy_photos, tmp_path_factory):
    return tiny_finetune(deploy_photos, tmp_path_factory)


@pytest.fixture(scope="module")
def int8_run(tuned):
    """The CLI's --int8 on the finetune run, into its export folder, and what it printed."""
    printed = io.StringIO()
    with redirect_stdout(printed):
        main(["export", str(tuned), "--int8"])
    return tuned / "export" / "model.int8.onnx", printed.getvalue()


def test_the_int8_file_is_written_smaller_and_agrees_with_fp32(int8_run, tmp_path):
    path, printed = int8_run
    sidecar = json.loads(path.with_name("model.int8.onnx.json").read_text())  # strict JSON: json refuses nothing
    figures = sidecar["int8"]
    assert figures["passed"] and figures["compared"] == 6 and figures["max_drop"] == 1.0
    assert figures["same_top1"] >= 5  # of the 6 validation images: int8 gives fp32's class on all but one at most
    assert figures["accuracy_drop_points"] <= 1.0 and figures["int8_bytes"] < figures["fp32_bytes"] / 3
    assert path.stat().st_size == figures["int8_bytes"]
    assert figures["calibration"]["images"] == 18  # all the run's training images, 6 of each class
    assert figures["calibration"]["per_class"] == {"blue": 6, "green": 6, "red": 6}
    assert figures["calibration"]["from"].startswith("the training set of ")
    assert set(figures["images_per_second"]) == {"fp32", "int8"}
    assert all(v > 0 for speeds in figures["images_per_second"].values() for v in speeds.values())
    assert figures["quantization"]["format"] == "QDQ" and "per channel" in figures["quantization"]["weights"]
    assert sidecar["precision"] == "int8" and sidecar["check"]["passed"]  # the fp32 graph's check against PyTorch
    assert figures["cpu"]["vnni"] == bool(cpu_int8().flags)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["class_names"]) == ["blue", "green", "red"] and "quantization" in meta
    line = re.search(r"^int8 accuracy .*$", printed, re.M)
    assert line and "same top-1 on" in line.group(0) and "images/s" in line.group(0), printed
    assert ("int8 instructions" in line.group(0)) == bool(cpu_int8().flags)


def test_predict_takes_the_int8_file_and_gives_fp32s_classes(int8_run, tuned, deploy_photos):
    from_run, from_int8 = predict(tuned, [deploy_photos], top_k=1), predict(int8_run[0], [deploy_photos], top_k=1)
    assert len(from_run) == len(from_int8) == 24
    same = sum(a.top[0][0] == b.top[0][0] for a, b in zip(from_run, from_int8, strict=True))
    assert same >= 22  # of the 24 photos
    classifier = load_classifier(int8_run[0])
    assert classifier.class_names == ["blue", "green", "red"] and classifier.crop == (32, 32)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "mnist"
    main(["run", "mnist", "--limit", "300", "--epochs", "1", "--no-scratch", "--quiet", "--out", str(out)])
    return out


def test_a_run_mnist_folder_calibrates_on_its_training_digits(digits):
    result = export(digits, int8=True)
    assert result.path == digits / "export" / "transfer.int8.onnx" and result.int8.passed
    assert result.int8.calibration["per_class"] == {c: 60 for c in "56789"}  # 300 of its training digits, 60 a class
    assert result.int8.compared == 1000 and result.int8.images.startswith("the test images of 5, 6, 7, 8, 9")


def test_a_broken_calibration_writes_nothing_and_says_what_was_measured(digits, tmp_path):
    blank = tmp_path / "blank"
    blank.mkdir()
    Image.new("L", (28, 28)).save(blank / "black.png")  # one blank image: every range calibrated to nothing
    out = tmp_path / "sub" / "transfer.int8.onnx"
    with pytest.raises(UserError) as caught:
        export(digits, out=out, int8=True, calibrate=[blank])
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{out}: not written, int8 accuracy ")
    assert "at most -1 allowed) on 1000 image(s) from the test images of" in message
    assert "--calibration-images" in message and "--max-drop" in message and "without --int8" in message
    assert not (tmp_path / "sub").exists()


def test_without_vnni_reduce_range_is_taken_and_said(tuned, deploy_photos):
    classifier = load_classifier(tuned)
    images = [(p.name, p.read_bytes()) for p in sorted((deploy_photos / "red").glob("*.jpg"))[:3]]
    fp32 = export(tuned, out=tuned.parent / "plain" / "model.onnx").path.read_bytes()
    no_vnni = cpu_int8("model name\t: Old CPU\nflags\t\t: fpu sse avx2 avx512f\n")
    assert no_vnni.flags == [] and not no_vnni.vnni and "reduce_range" in no_vnni.summary()
    _, result = int8_export(fp32, classifier, 32, 32, ("given", images, None), ("held", images, ["red"] * len(images)),
                            100.0, cpu=no_vnni)
    assert result.quantization["reduce_range"] is True and result.calibration["per_class"] is None
    assert "Old CPU, no VNNI" in result.summary()
    assert cpu_int8("model name\t: New\nflags\t: avx2 avx512_vnni amx_int8\n").flags == ["avx512_vnni", "amx_int8"]
    assert cpu_int8("Features\t: fp asimd asimddp\nModel\t: Raspberry Pi 5\n").summary() == \
        "Raspberry Pi 5, int8 instructions asimddp"


def test_bad_int8_options_are_one_line_before_any_work(tuned, tmp_path):
    out = tmp_path / "m.onnx"
    for kwargs, pattern in (({"format": "torchscript", "int8": True}, r"--int8: for --format onnx"),
                            ({"int8": True, "max_drop": -1.0}, r"--max-drop -1.0: give accuracy points"),
                            ({"int8": True, "max_drop": float("nan")}, r"--max-drop nan"),
                            ({"int8": True, "calibration_images": 0}, r"--calibration-images 0: give 1 or more"),
                            ({"calibrate": [tmp_path]}, r"--calibrate: only with --int8"),
                            ({"int8": True, "calibrate": [tmp_path / "none"]}, r"--calibrate .*none: no such file")):
        with pytest.raises(UserError, match=pattern):
            export(tuned, out=out, **kwargs)
    assert not out.exists()


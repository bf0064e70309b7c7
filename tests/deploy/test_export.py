"""export: ONNX and TorchScript files of tiny runs pass their check, run without transferkit, and predict alike."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import tiny_finetune
from PIL import Image

from transferkit import UserError, export, predict
from transferkit.cli import main
from transferkit.deploy.check import compare
from transferkit.inference.formats import torchscript_bytes, torchscript_runner
from transferkit.inference.graph import deployable, graph_input
from transferkit.inference.predict import load_classifier
from transferkit.models import BackboneClassifier
from transferkit.reporting import load_model

EXPORT_PAGE = Path(__file__).resolve().parents[2] / "docs" / "export.md"


@pytest.fixture(scope="module")
def tuned(deploy_photos, tmp_path_factory):
    return tiny_finetune(deploy_photos, tmp_path_factory)


@pytest.fixture(scope="module")
def digits(tiny_run, tmp_path_factory):
    return Path(shutil.copytree(tiny_run, tmp_path_factory.mktemp("runs") / "mnist"))  # the export goes into it


@pytest.fixture(scope="module")
def exported(tuned, tmp_path_factory):
    """Both formats of the finetune run, into a folder of their own."""
    folder = tmp_path_factory.mktemp("exported")
    return {fmt: export(tuned, fmt, out=folder / f"model.{fmt}") for fmt in ("onnx", "torchscript")}


def test_both_formats_pass_their_check_on_the_validation_images(exported):
    for fmt, result in exported.items():
        assert result.check.passed and result.check.checked == 6  # 20% of 24 photos held out: the run's validation
        assert result.check.max_probability_difference <= 1e-4 and result.check.same_top1 == 6
        sidecar = json.loads(result.sidecar.read_text())
        assert sidecar["check"]["checked"] == 6 and sidecar["check"]["passed"] is True
        assert sidecar["class_names"] == ["blue", "green", "red"] and sidecar["format"] == fmt
        assert sidecar["input"]["shape"] == ["batch", 32, 32, 3] and sidecar["input"]["dtype"] == "uint8"
        assert sidecar["preprocessing"]["resize"] == 37 and sidecar["preprocessing"]["crop"] == 32
    meta = {p.key: p.value for p in onnx.load(str(exported["onnx"].path)).metadata_props}
    assert json.loads(meta["class_names"]) == ["blue", "green", "red"]
    assert json.loads(meta["preprocessing"])["mean"] == [0.485, 0.456, 0.406]


def test_the_files_run_without_transferkit_at_any_batch_size(exported, tuned, deploy_photos, tmp_path):
    classifier = load_classifier(tuned)
    decoded = np.stack([classifier.decode(p.read_bytes()) for p in sorted(deploy_photos.rglob("*.jpg"))[:5]])
    np.save(tmp_path / "x.npy", graph_input(decoded, 32, 32))
    np.save(tmp_path / "expected.npy", classifier.probabilities(decoded))
    script = f"""
import json, sys
import numpy as np, onnxruntime, torch
x, expected = np.load({str(tmp_path / "x.npy")!r}), np.load({str(tmp_path / "expected.npy")!r})
session = onnxruntime.InferenceSession({str(exported["onnx"].path)!r}, providers=["CPUExecutionProvider"])
names = json.loads(session.get_modelmeta().custom_metadata_map["class_names"])
extra = {{"transferkit.json": ""}}
module = torch.jit.load({str(exported["torchscript"].path)!r}, _extra_files=extra)
assert json.loads(extra["transferkit.json"])["class_names"] == names == ["blue", "green", "red"]
for n in (1, 5):
    onnx_p = session.run(["probabilities"], {{"images": x[:n]}})[0]
    script_p = module(torch.from_numpy(x[:n])).numpy()
    assert np.abs(onnx_p - expected[:n]).max() < 1e-5 and np.abs(script_p - expected[:n]).max() < 1e-5, n
assert not [m for m in sys.modules if m.startswith("transferkit")]
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.stdout.strip() == "ok", done.stderr[-2000:]


def test_predict_on_the_onnx_file_gives_the_run_folders_top_k(exported, tuned, deploy_photos, capsys):
    onnx_file = exported["onnx"].path
    # fp32 on both sides: a run folder's default (auto) is bf16 on CPUs with native bf16 (AMX, AVX512-BF16)
    from_run = predict(tuned, [deploy_photos], top_k=3, precision="fp32")
    from_onnx = predict(onnx_file, [deploy_photos], top_k=3)
    assert len(from_run) == len(from_onnx) == 24
    for a, b in zip(from_run, from_onnx, strict=True):
        assert a.path == b.path and [c for c, _ in a.top] == [c for c, _ in b.top]
        assert np.allclose([p for _, p in a.top], [p for _, p in b.top], atol=1e-5)
    main(["predict", str(onnx_file), str(deploy_photos / "red"), "--csv", "--top-k", "2"])
    onnx_rows = capsys.readouterr().out.splitlines()
    main(["predict", str(tuned), str(deploy_photos / "red"), "--csv", "--top-k", "2", "--precision", "fp32"])
    run_rows = capsys.readouterr().out.splitlines()
    assert len(onnx_rows) == len(run_rows) == 1 + 8 * 2 and onnx_rows[0] == run_rows[0]
    for a, b in zip(onnx_rows[1:], run_rows[1:], strict=True):  # path, rank, class alike; probabilities printed to 6 digits
        (*same_a, p_a, err_a), (*same_b, p_b, err_b) = a.split(","), b.split(",")
        assert same_a == same_b and err_a == err_b and abs(float(p_a) - float(p_b)) <= 2e-6


def test_a_run_mnist_folder_exports_its_transfer_model(digits, tmp_path, capsys):
    main(["export", str(digits), "--format", "onnx"])
    out = capsys.readouterr().out
    assert re.search(r"checked on \d+ image\(s\) from the test images of 5, 6, 7, 8, 9 in mnist", out), out
    path = digits / "export" / "transfer.onnx"
    sidecar = json.loads(path.with_name("transfer.onnx.json").read_text())
    assert sidecar["input"]["shape"] == ["batch", 28, 28, 1] and sidecar["class_names"] == list("56789")
    assert sidecar["preprocessing"]["inside_the_graph"] == "pixel / 255" and sidecar["check"]["passed"]
    arrays = np.load(Path(__import__("transferkit").__file__).parent / "data" / "mnist.npz")
    for i in range(6):
        Image.fromarray(arrays["x_test"][i]).save(tmp_path / f"{i}.png")
    from_run, from_onnx = predict(digits, [tmp_path]), predict(path, [tmp_path])
    assert [p.top[0][0] for p in from_run] == [p.top[0][0] for p in from_onnx]
    main(["export", str(digits), "--format", "torchscript", "--check", str(tmp_path)])
    assert "checked on 6 image(s) from --check" in capsys.readouterr().out


def test_a_failed_check_is_an_error_and_writes_nothing(tuned, tmp_path):
    out = tmp_path / "sub" / "model.onnx"
    with pytest.raises(UserError, match=r"model.onnx: not written, the exported model does not match PyTorch on 6 "
                                         r"image\(s\) .* largest probability difference .* \(at most 0\)"):
        export(tuned, "onnx", out=out, tolerance=0.0)  # ONNX Runtime's kernels round otherwise than PyTorch's
    assert not (tmp_path / "sub").exists()


def test_the_check_sees_another_model(tuned, deploy_photos):
    model, spec = load_model(tuned / "weights" / "model.safetensors")
    torch.manual_seed(1)
    other = BackboneClassifier("resnet18", 3).eval()  # same architecture and input, other weights
    runner = torchscript_runner(torchscript_bytes(deployable(other, spec), torch.zeros(2, 32, 32, 3, dtype=torch.uint8),
                                                  {}))
    images = [(str(p), p.read_bytes()) for p in sorted(deploy_photos.rglob("*.jpg"))]
    result = compare(load_classifier(tuned), runner, images, "photos", 32, 32)
    assert result.checked == 24 and not result.passed and result.max_probability_difference > 1e-3


def test_an_existing_output_needs_force(exported, tuned, capsys):
    path = exported["onnx"].path
    before = path.stat().st_mtime_ns
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(tuned), "--out", str(path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert f"{path}: exists; give another --out, or --force to replace it" in err
    assert path.stat().st_mtime_ns == before
    main(["export", str(tuned), "--out", str(path), "--force"])
    assert path.stat().st_mtime_ns != before


def test_without_the_export_extra_the_error_names_the_install_command(tuned, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed: its import fails
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(tuned), "--out", str(tuned / "none.onnx")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "needs the optional package onnxruntime" in err and 'pip install "transferkit[export]"' in err
    assert not (tuned / "none.onnx").exists()


def test_the_readme_snippet_gives_predicts_probabilities(tuned, deploy_photos, tmp_path):
    snippet = docs_snippet()
    (tmp_path / "runs").mkdir()
    shutil.copytree(tuned / "weights", tmp_path / "runs" / "my-finetune" / "weights")
    shutil.copy(deploy_photos / "green" / "3.jpg", tmp_path / "photo.jpg")
    done = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    printed = {name: float(p) for name, p in (line.split() for line in done.stdout.splitlines())}
    [expected] = predict(tuned, [deploy_photos / "green" / "3.jpg"], top_k=3, precision="fp32")  # the snippet's, fp32
    assert list(printed) == [c for c, _ in expected.top]
    assert np.allclose(list(printed.values()), [p for _, p in expected.top], atol=1e-6)


def docs_snippet() -> str:
    """The Python block of docs/export.md's "Using the weights without transferkit" section."""
    text = EXPORT_PAGE.read_text(encoding="utf-8")
    section = text.split("## Using the weights without transferkit", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_command_offers_the_formats_the_library_knows():
    from transferkit.cli import export_command
    from transferkit.deploy import FORMATS

    [option] = [p for p in export_command.params if p.name == "format"]
    assert tuple(option.type.choices) == FORMATS

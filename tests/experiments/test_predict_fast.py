"""predict's fast path (issue 28): BatchNorm folded, channels-last, decoding in threads, batches bounded in
pixels, and the same probabilities as the plain eval model."""

import importlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from transferkit import UserError, predict
from transferkit.cli import main
from transferkit.data.preprocess import InputTransform
from transferkit.inference.predict import load_classifier
from transferkit.models import BackboneClassifier
from transferkit.reporting import load_model, save_model
from transferkit.training import images_to_tensor

predict_module = importlib.import_module("transferkit.inference.predict")  # the package names the function
CROP, RESIZE = 64, 73
PRE = {"kind": "normalize", "resize": RESIZE, "crop": CROP, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder of EfficientNet-Lite0 (random weights, BatchNorm statistics drawn away from 0 and 1 so
    that folding them matters) for 3 classes, calibrated at temperature 1.7."""
    torch.manual_seed(0)
    model = BackboneClassifier("efficientnet_lite0", 3).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    root = tmp_path_factory.mktemp("run")
    save_model(root / "weights", "model", model, ["ant", "bee", "cat"], PRE, temperature=1.7)
    (root / "results.json").write_text(json.dumps({"model": "weights/model.safetensors", "config": {}, "phases": {}}))
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    for i in range(11):
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 255, (40 + 5 * i, 90 - 3 * i, 3), dtype=np.uint8)).save(root / f"{i:02d}.png")
    (root / "05b.png").write_bytes(b"not an image")  # an unreadable file among them keeps its place
    return root


def plain_probabilities(run, batch: np.ndarray) -> np.ndarray:
    """Today's predict before the fast path: the eval model in NCHW, InputTransform in front."""
    model, spec = load_model(run / "weights" / "model.safetensors")
    with torch.inference_mode():
        logits = model(InputTransform(CROP, tuple(PRE["mean"]), tuple(PRE["std"])).eval()(
            images_to_tensor(batch, scale=False)))
        return torch.softmax(logits / spec["temperature"], dim=1).numpy()


def test_the_fast_path_gives_the_plain_models_probabilities(run, photos):
    classifier = load_classifier(run, "fp32")
    batch = np.stack([classifier.decode(p.read_bytes()) for p in sorted(photos.glob("[0-9][0-9].png"))])
    assert batch.shape == (11, CROP, CROP, 3)  # cropped as decoded
    fast, plain = classifier.probabilities(batch), plain_probabilities(run, batch)
    assert np.abs(fast - plain).max() < 1e-4 and (fast.argmax(1) == plain.argmax(1)).all()
    assert np.abs(classifier.probabilities(batch[:1]) - plain[:1]).max() < 1e-4  # batch 1 alike


def test_predict_keeps_the_order_and_reports_its_speed(run, photos):
    rows = predict(run, [photos], top_k=1, precision="fp32")
    assert [r.path.rsplit("/", 1)[1] for r in rows] == sorted(p.name for p in photos.iterdir())
    assert rows[6].error and "not an image" in rows[6].error and all(r.error is None for i, r in enumerate(rows) if i != 6)
    classifier = load_classifier(run, "fp32")
    files = [p for p in sorted(photos.iterdir()) if p.name != "05b.png"]
    plain = plain_probabilities(run, np.stack([classifier.decode(p.read_bytes()) for p in files]))
    names = ["ant", "bee", "cat"]
    assert [r.top[0][0] for r in rows if not r.error] == [names[i] for i in plain.argmax(1)]
    assert rows.images_per_second > 0


def test_batches_are_bounded_in_pixels(run, photos, monkeypatch):
    sizes = []
    real = predict_module.load_classifier

    def counting(*args):
        classifier = real(*args)
        run_batch = classifier.probabilities

        def probabilities(batch):
            sizes.append(len(batch))
            return run_batch(batch)

        object.__setattr__(classifier, "probabilities", probabilities)
        return classifier

    monkeypatch.setattr(predict_module, "load_classifier", counting)
    monkeypatch.setattr(predict_module, "BATCH_PIXELS", 3 * CROP * CROP)
    predict(run, sorted(photos.glob("[0-9][0-9].png")), batch_size=32)
    assert max(sizes) == 3 and sum(sizes) == 11


def test_precision_choices(run, photos, tmp_path, capsys):
    rows = predict(run, [photos / "00.png"], precision="bf16")  # emulated on CPUs without it: slow, still right
    assert rows[0].top[0][0] == predict(run, [photos / "00.png"], precision="fp32")[0].top[0][0]
    with pytest.raises(UserError, match="--precision must be one of auto, fp32, bf16"):
        predict(run, [photos], precision="fp16")
    main(["predict", str(run), str(photos / "00.png"), "--csv"])
    assert "1 image(s) at " in capsys.readouterr().err


def test_the_auto_engine_takes_onnx_runtime_only_where_its_export_pays(tmp_path):
    from transferkit.config import ONNX_AUTO_IMAGES
    from transferkit.inference.predict import resolve_engine

    run = tmp_path  # a run folder (a directory); an exported file runs as exported
    assert resolve_engine("auto", run, "fp32", ONNX_AUTO_IMAGES - 1) == "pytorch"
    assert resolve_engine("auto", run, "fp32", ONNX_AUTO_IMAGES) == "onnxruntime"  # the export extra is installed here
    assert resolve_engine("auto", run, "bf16", ONNX_AUTO_IMAGES) == "pytorch"  # bf16 is PyTorch's
    assert resolve_engine("auto", tmp_path / "model.onnx", "fp32", ONNX_AUTO_IMAGES) == "pytorch"
    assert resolve_engine("pytorch", run, "fp32", 10**6) == "pytorch"

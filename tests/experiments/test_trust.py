"""Predictions people can trust: per-class metrics, class weights for imbalanced folders, temperature scaling,
test-time augmentation, on small generated folders with random weights."""

import json

import numpy as np
import pytest
from PIL import Image

from transferkit import UserError, finetune, predict
from transferkit.cli import main
from transferkit.training.class_weights import choose_class_weights
from transferkit.training.metrics import calibrate, class_metrics, reliability, softmax

COLORS = {"red": (200, 60, 60), "green": (60, 180, 60), "blue": (60, 60, 200)}
OPTIONS = dict(backbone="resnet18", weights="none", image_size=32, epochs=2, batch_size=8)


def make_folder(root, sizes: dict[str, int], seed: int = 0):
    """Noisy colour patches: learnable, but not so easily that every validation image is right."""
    rng = np.random.default_rng(seed)
    for name, n in sizes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = np.clip(np.array(COLORS[name]) + rng.integers(-90, 90, (30, 40, 3)), 0, 255).astype(np.uint8)
            arr[:, :8] = 255  # a bright left edge: the mirror image differs from the image
            Image.fromarray(arr).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("imbalanced") / "imb", {"red": 180, "green": 70, "blue": 30})


@pytest.fixture(scope="module")
def calibrated(imbalanced, tmp_path_factory):
    """A finetune run on the imbalanced folder: auto class weights, a temperature, TTA measured."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg")))
        out = tmp_path_factory.mktemp("runs") / "ft"
        main(["finetune", str(imbalanced), "--backbone", "resnet18", "--weights", "none", "--image-size", "32",
              "--epochs", "1", "--batch-size", "8", "--lr", "0.0003", "--head-dropout", "0", "--val-fraction",
              "0.25", "--tta", "--out", str(out)])
    return out


def over_confident_logits(seed: int, n: int = 3000, k: int = 5, scale: float = 6.0):
    """Logits of a model that is right about 60% of the time but says so with near certainty."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    z = rng.normal(0, 1, (n, k))
    z[np.arange(n), y] += 1.2
    return z * scale, y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_temperature_scaling_lowers_the_ece_of_an_over_confident_model_and_keeps_its_classes(seed):
    logits, labels = over_confident_logits(seed)
    result = calibrate(logits, labels)
    assert result.temperature > 2  # softened
    assert result.before["ece"] > 0.2 and result.after["ece"] < result.before["ece"] / 4
    assert np.array_equal(softmax(logits).argmax(1), softmax(logits, result.temperature).argmax(1))


def test_a_model_right_on_every_image_keeps_temperature_one():
    labels = np.arange(100) % 4
    logits = np.eye(4)[labels] * 5
    result = calibrate(logits, labels)
    assert result.temperature == 1.0 and "every image is classified right" in result.note


def test_reliability_bins_and_ece_by_hand():
    probabilities = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.55, 0.45]])
    labels = np.array([0, 1, 0, 0])  # the 0.95 bin is right half the time, the 0.55 bin always
    bins = reliability(probabilities, labels)
    assert bins["counts"][14] == 2 and bins["counts"][8] == 2  # (14/15, 1] and (8/15, 9/15]
    assert bins["ece"] == pytest.approx((2 * abs(0.5 - 0.95) + 2 * abs(1.0 - 0.55)) / 4)


def test_class_metrics_by_hand():
    m = class_metrics([[5, 1, 0], [0, 3, 0], [2, 0, 0]])  # class 2 is never predicted
    assert m["per_class"]["precision"] == [pytest.approx(5 / 7), 0.75, 0.0]
    assert m["per_class"]["recall"] == [pytest.approx(5 / 6), 1.0, 0.0]
    assert m["per_class"]["support"] == [6, 3, 2]
    assert m["balanced_accuracy"] == pytest.approx((5 / 6 + 1 + 0) / 3)
    f1 = [2 * (5 / 7) * (5 / 6) / (5 / 7 + 5 / 6), 2 * 0.75 / 1.75, 0.0]
    assert m["macro_f1"] == pytest.approx(sum(f1) / 3, abs=1e-6)
    assert m["imbalanced"] is True  # 6 images against 2
    assert class_metrics([[4, 1], [1, 3]])["imbalanced"] is False


def test_auto_weights_switch_on_for_an_imbalanced_set_and_not_for_a_balanced_one():
    labels = np.repeat([0, 1, 2], [180, 70, 30])
    on = choose_class_weights("auto", labels, 3)
    assert on.weights == pytest.approx([280 / (3 * 180), 280 / (3 * 70), 280 / (3 * 30)], rel=1e-5)
    assert "inverse frequency" in on.reason and "30 to 180" in on.reason
    assert choose_class_weights("auto", np.repeat([0, 1, 2], [50, 40, 26]), 3).weights is None  # within 2x
    assert choose_class_weights("none", labels, 3).weights is None
    with pytest.raises(UserError, match="--class-weights must be one of auto, none, got 'inverse'"):
        choose_class_weights("inverse", labels, 3)


def test_finetune_weighs_an_imbalanced_folder_and_not_a_balanced_one(imbalanced, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    balanced = make_folder(tmp_path / "balanced", {"red": 20, "green": 20, "blue": 20}, seed=1)
    plain = finetune(balanced, **OPTIONS, save=False, verbose=True)
    assert plain.results["phases"]["frozen"]["class_weights"]["weights"] is None
    assert "class weights none (classes of 16 to 16 training images: balanced within 2x)" in capsys.readouterr().out
    weighted = finetune(imbalanced, **OPTIONS, save=False, verbose=False)
    unweighted = finetune(imbalanced, **OPTIONS, class_weights="none", save=False, verbose=False)
    assert len(weighted.results["phases"]["frozen"]["class_weights"]["weights"]) == 3
    assert unweighted.results["phases"]["frozen"]["class_weights"]["weights"] is None
    # The weights are in the loss: the same seed trains another head.
    assert weighted.results["phases"]["frozen"]["history"] != unweighted.results["phases"]["frozen"]["history"]


def test_the_run_records_metrics_calibration_and_tta(calibrated):
    results = json.loads((calibrated / "results.json").read_text())
    frozen = results["phases"]["frozen"]
    metrics, matrix = frozen["metrics"], np.asarray(frozen["confusion_matrix"])
    assert metrics["per_class"]["support"] == matrix.sum(1).tolist() and metrics["imbalanced"] is True
    assert metrics["balanced_accuracy"] == pytest.approx(np.mean(np.diag(matrix) / matrix.sum(1)))
    calibration = frozen["calibration"]
    assert calibration["split"] == "validation" and calibration["images"] == frozen["val_samples"] >= 50
    assert calibration["ece_after"] < calibration["ece_before"]
    spec = json.loads((calibrated / "weights" / "model.json").read_text())
    assert spec["temperature"] == calibration["temperature"] != 1.0
    tta = results["tta"]
    assert tta["views"] == ["original", "horizontal flip"]
    assert tta["without"]["accuracy"] == pytest.approx(frozen["val_accuracy"], abs=0.02)  # bf16 vs the features
    page = (calibrated / "report.html").read_text()
    assert 'class="per-class"' in page and 'data-metric="ece_after"' in page and "reliability" in page
    assert 'data-metric="balanced_accuracy"' in page  # the headline of an imbalanced validation set
    assert 'data-metric="tta_accuracy"' in page


def test_a_saved_temperature_changes_predicts_probabilities_but_not_its_classes(calibrated, imbalanced, tmp_path):
    files = [imbalanced / c / f"{i}.png" for c in COLORS for i in range(4)]
    calibrated_predictions = predict(calibrated, files, top_k=3)
    spec_file = calibrated / "weights" / "model.json"
    spec = json.loads(spec_file.read_text())
    try:
        spec_file.write_text(json.dumps({k: v for k, v in spec.items() if k != "temperature"}))
        raw = predict(calibrated, files, top_k=3)
    finally:
        spec_file.write_text(json.dumps(spec))
    t = spec["temperature"]
    for c, r in zip(calibrated_predictions, raw, strict=True):
        assert [name for name, _ in c.top] == [name for name, _ in r.top]
        p_raw = np.array([p for _, p in r.top])
        # softmax(z / t) from softmax(z): p ** (1 / t), renormalised over all (here: all 3) classes
        expected = p_raw ** (1 / t) / np.sum(p_raw ** (1 / t))
        assert [p for _, p in c.top] == pytest.approx(expected.tolist(), abs=1e-5)
        assert not np.allclose([p for _, p in c.top], p_raw, atol=1e-3)


def test_the_exported_model_carries_the_temperature(calibrated, tmp_path):
    from transferkit import export

    # Checked against predict's (calibrated) probabilities: a graph without the temperature fails the check.
    result = export(calibrated, "torchscript", out=tmp_path / "model.torchscript.pt")
    assert result.check.passed and result.check.max_probability_difference < 1e-4
    sidecar = json.loads(result.sidecar.read_text())
    assert "calibrated" in sidecar["output"]["meaning"]


def test_predict_tta_is_the_mean_over_the_image_and_its_mirror(calibrated, imbalanced, tmp_path):
    image = imbalanced / "green" / "3.png"
    mirror = tmp_path / "mirror.png"
    Image.open(image).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirror)
    # fp32: in bf16 (auto, where the CPU has it) the mirror image's batch of two rounds unlike the one of one
    [plain, mirrored] = predict(calibrated, [image, mirror], top_k=3, precision="fp32")
    [tta] = predict(calibrated, [image], top_k=3, tta=True, precision="fp32")
    mean = {c: (dict(plain.top)[c] + dict(mirrored.top)[c]) / 2 for c in COLORS}
    assert dict(tta.top) == pytest.approx(mean, abs=1e-5)
    assert dict(tta.top) != pytest.approx(dict(plain.top), abs=1e-4)  # the mirror image differs


def test_calibration_is_never_fitted_on_a_test_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    for split, n in (("train", 20), ("test", 30)):
        make_folder(tmp_path / "data" / split, {"red": n, "green": n}, seed=len(split))
    result = finetune(tmp_path / "data", **OPTIONS, save=False, verbose=True)
    assert "calibration" not in result.results["phases"]["frozen"]
    assert "test/ folder" in result.results["calibration"]["reason"]
    assert "calibration: off (the validation images are the test/ folder" in capsys.readouterr().out
    with pytest.raises(UserError, match=r"^--calibrate: the validation images are the test/ folder"):
        finetune(tmp_path / "data", **OPTIONS, calibrate=True, save=False, verbose=False)


def test_bad_calibration_and_class_weight_options_are_one_line(imbalanced, tmp_path, capsys):
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", str(imbalanced), "--backbone", "resnet18", "--weights", "none", "--image-size", "32",
              "--limit", "30", "--calibrate", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err  # 2: a bad option
    assert "--calibrate: the validation split has 30 images and a temperature needs at least 50" in err
    assert not out.exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", str(imbalanced), "--class-weights", "inverse"])
    assert exit_info.value.code == 2 and "'inverse' is not one of 'auto', 'none'" in capsys.readouterr().err
    with pytest.raises(UserError, match="--class-weights must be one of auto, none, got 'inverse'"):
        finetune(imbalanced, **OPTIONS, class_weights="inverse", save=False, verbose=False)


def test_run_records_per_class_metrics():
    from transferkit import run_split

    result = run_split("mnist", limit=300, epochs=1, save=False, verbose=False, scratch=False)
    for phase in result.results["phases"].values():
        assert phase["class_weights"]["weights"] is None  # MNIST's classes are balanced within 2x
        assert len(phase["metrics"]["per_class"]["f1"]) == len(phase["classes"])
        assert "calibration" not in phase  # the split experiment validates on the test split: nothing is fitted

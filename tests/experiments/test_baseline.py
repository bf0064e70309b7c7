"""finetune's baselines: logistic regressions on the frozen features and (small images) the raw pixels, in the
console, results.json and report.html; finetune with no --backbone runs offline (issue 28's digits case)."""

import json
import urllib.request

import pytest

from transferkit.cli import main
from transferkit.experiments.baseline import feature_baseline, pixel_baseline
from transferkit.experiments.image_data import read_image_data
from transferkit.reporting.results import baseline_verdicts


@pytest.fixture(scope="module")
def tuned(digits_folder, tmp_path_factory):
    """finetune on real digits with no --backbone, no network and an empty TORCH_HOME."""
    out = tmp_path_factory.mktemp("runs") / "ft"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg")))
        mp.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch")))

        def offline(*args, **kwargs):
            raise OSError("offline (test)")

        mp.setattr(urllib.request, "urlopen", offline)
        main(["finetune", str(digits_folder), "--image-size", "64", "--epochs", "2", "--out", str(out)])
    return out


def test_finetune_with_no_backbone_runs_offline_with_its_baselines(tuned, capsys):
    results = json.loads((tuned / "results.json").read_text())
    assert results["config"]["backbone"] == "efficientnet_lite0" and results["config"]["weights"] == "imagenet"
    features, pixels = results["baselines"]
    assert features["kind"] == "features" and "efficientnet_lite0's frozen features (1280 per image)" in features["fit_on"]
    assert pixels["kind"] == "pixels" and "32x32 grey" in pixels["fit_on"]
    n_train = results["phases"]["frozen"]["train_samples"]
    for baseline in (features, pixels):
        assert baseline["train_samples"] == n_train and baseline["val_samples"] == 24
        # real digits: both logistic regressions separate 4 classes far above chance (0.25)
        assert 0.7 <= baseline["val_accuracy"] <= 1 and 0 <= baseline["seconds"] < 60
    report = (tuned / "report.html").read_text()
    assert 'id="baselines"' in report and f'data-metric="baseline_pixels" data-value="{pixels["val_accuracy"]}"' in report
    for sentence in baseline_verdicts(results):
        assert f'<p class="verdict">{sentence}</p>' in report


def test_the_console_says_each_baseline(digits_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    main(["finetune", str(digits_folder), "--image-size", "32", "--epochs", "1", "--limit", "40", "--out",
          str(tmp_path / "ft")])
    out = capsys.readouterr().out
    assert "baseline: logistic regression on the frozen features: validation accuracy" in out
    assert "baseline: logistic regression on the raw pixels: validation accuracy" in out
    results = json.loads((tmp_path / "ft" / "results.json").read_text())
    assert [b["train_samples"] for b in results["baselines"]] == [results["phases"]["frozen"]["train_samples"]] * 2
    for sentence in baseline_verdicts(results):
        assert sentence in out.replace("\n", " ")


def test_no_pixel_baseline_for_larger_images(tmp_path, monkeypatch):
    from conftest import write_sklearn_digits

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    small, large = (write_sklearn_digits(tmp_path / f"d{size}", 6, classes=2, size=size) for size in (32, 33))
    for folder, expected in ((small, True), (large, False)):
        data = read_image_data(str(folder), 0.5, 0, None, "never", 36, 1, None, 0)
        baseline = pixel_baseline(str(folder), 0.5, 0, None, data)
        assert (baseline is not None) == expected, folder


def test_a_sentence_when_a_baseline_matches_or_beats_the_network():
    def results(network, features, pixels, phases=("frozen",)):
        return {"phases": {p: {"validated_on": "val", "val_accuracy": network} for p in phases},
                "baselines": [{"name": "logistic regression on the frozen features", "kind": "features",
                               "val_accuracy": features},
                              {"name": "logistic regression on the raw pixels", "kind": "pixels", "val_accuracy": pixels}]}

    assert baseline_verdicts(results(0.94, 0.95, 0.5)) == [
        "A logistic regression on the frozen features reaches 0.95, the fine-tuned network 0.94: the features carry "
        "the task; the trained head adds nothing here."]
    assert baseline_verdicts(results(0.95, 0.90, 0.80)) == []  # the network beats both: nothing to say
    both = baseline_verdicts(results(0.95, 0.948, 0.99, phases=("frozen", "unfrozen")))
    assert "the fine-tuning adds nothing here" in both[0] and "the pixels carry it" in both[1]
    assert baseline_verdicts({"phases": {}}) == []


def test_the_feature_baseline_is_the_linear_probe():
    import torch

    x = torch.randn(40, 5)
    y = (x[:, 0] > 0).long()
    baseline = feature_baseline("resnet18", (x[:30], y[:30]), (x[30:], y[30:]))
    assert baseline.val_accuracy >= 0.9 and baseline.to_dict()["name"] == "logistic regression on the frozen features"


def test_the_default_training_reaches_the_linear_probe_on_real_digits(sk_digits, tmp_path, monkeypatch):
    # Issue 28's digits case at a small scale: finetune with no options (its training length from the data)
    # must not underfit: the head reaches the logistic regression on the very features it trains on.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    out = tmp_path / "ft"
    main(["finetune", str(sk_digits), "--image-size", "64", "--out", str(out), "--quiet"])
    results = json.loads((out / "results.json").read_text())
    frozen = results["phases"]["frozen"]
    probe = next(b for b in results["baselines"] if b["kind"] == "features")
    assert frozen["stopping"]["reason"] != "given"  # the default rule chose the length
    assert frozen["val_accuracy"] >= probe["val_accuracy"] - 2 / probe["val_samples"], (frozen["stopping"], probe)

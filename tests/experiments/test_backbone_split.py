"""The split experiment on a pretrained backbone (real EfficientNet-Lite0 ImageNet weights, tiny generated
images): target phase on stored features, scratch control, --shots, the feature store, predict."""

import json

import pytest

from transferkit import UserError, predict, run_split
from transferkit.cli import main


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("xdg")


@pytest.fixture(scope="module")
def first_run(shapes, cache, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(cache))
        out = tmp_path_factory.mktemp("runs") / "lite"
        main(["run", str(shapes), "--backbone", "efficientnet_lite0", "--target", "cyan,green", "--shots", "4",
              "--epochs", "30", "--batch-size", "4", "--out", str(out)])
    return out


def test_imagenet_is_the_source_and_only_target_phases_run(first_run):
    results = json.loads((first_run / "results.json").read_text())
    assert list(results["phases"]) == ["transfer", "scratch"]
    assert results["config"]["source_classes"] == [] and results["config"]["target_classes"] == ["cyan", "green"]
    assert results["source"] == "efficientnet_lite0 with ImageNet weights"
    transfer, scratch = results["phases"]["transfer"], results["phases"]["scratch"]
    assert transfer["train_samples"] == scratch["train_samples"] == 8  # --shots 4, two classes
    assert transfer["test_samples"] == 6
    # ImageNet features tell cyan from green squares after a few head steps (uint8 in, normalised once).
    assert transfer["test_accuracy"] == 1.0
    assert transfer["params"]["non_trainable"] > 3_000_000 and scratch["params"]["non_trainable"] == 0
    assert results["feature_pass"]["images"] == 14 and results["feature_pass"]["from_store"] is False
    spec = json.loads((first_run / "weights" / "transfer.json").read_text())
    assert spec["backbone"] == "efficientnet_lite0"
    assert spec["preprocessing"] == {"kind": "normalize", "resize": 224, "crop": 224,
                                     "mean": [127 / 255] * 3, "std": [128 / 255] * 3}
    scratch_spec = json.loads((first_run / "weights" / "scratch.json").read_text())
    assert scratch_spec["preprocessing"]["crop"] == 16  # the scratch control trains at the data's own size


def test_a_run_folder_is_refused_as_finetune_weights(first_run):
    from transferkit.experiments.run_folder import weights_source

    with pytest.raises(UserError, match="a `transferkit run` folder, whose frozen features are the weights"):
        weights_source(str(first_run))


def test_a_second_run_reads_the_stored_features_and_trains_the_same(first_run, shapes, cache, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    again = run_split(str(shapes), target="cyan,green", backbone="efficientnet_lite0", shots=4, epochs=30,
                      batch_size=4, scratch=False, out=tmp_path / "again", verbose=False)
    assert again.results["feature_pass"]["from_store"] is True
    first = json.loads((first_run / "results.json").read_text())["phases"]["transfer"]
    metrics = ("loss", "val_loss", "val_accuracy")
    assert [[e[m] for m in metrics] for e in again.results["phases"]["transfer"]["history"]] == [
        [e[m] for m in metrics] for e in first["history"]]


def test_predict_uses_the_backbones_preprocessing(first_run, shapes):
    files = sorted((shapes / "test" / "green").glob("*.png")) + sorted((shapes / "test" / "cyan").glob("*.png"))
    predictions = predict(first_run, files, top_k=2)
    assert len(predictions) == 6 and all(p.error is None for p in predictions)
    assert all({c for c, _ in p.top} == {"cyan", "green"} for p in predictions)
    assert all(abs(sum(prob for _, prob in p.top) - 1) < 1e-5 for p in predictions)


@pytest.mark.parametrize("options, message", [
    ({"source": "amber"}, "--source: with --backbone efficientnet_lite0 the source is"),
    ({"shots": 7}, "--shots 7: class 'cyan' has only 6 training images"),
    ({"shots": 2, "train_fraction": 0.5}, "give one of them"),
    ({"backbone": "resnet9000"}, "--backbone resnet9000: unknown"),
])
def test_bad_backbone_options_are_refused_before_a_run_folder_exists(shapes, tmp_path, options, message):
    settings = {"target": "cyan,green", "backbone": "efficientnet_lite0", **options}
    with pytest.raises(UserError, match=message):
        run_split(str(shapes), out=tmp_path / "run", verbose=False, **settings)
    assert not (tmp_path / "run").exists()


def test_report_names_the_pretrained_source(first_run):
    html = (first_run / "report.html").read_text(encoding="utf-8")
    assert "The source is efficientnet_lite0 with ImageNet weights" in html
    assert 'id="phase-transfer"' in html and 'id="phase-scratch"' in html and 'id="phase-source"' not in html
    assert "features.blocks (Sequential)" in html  # the backbone's stages, not its hundreds of layers

"""Studies on a pretrained backbone (tiny generated colour images; EfficientNet-Lite0's real ImageNet weights,
ResNet-18 with weights none): ImageNet is the source, the shots study's backbone features are computed once
for the whole study, the freeze study cuts at the backbone's stages, and bad options are one line."""

import json

import pytest
import torch
from conftest import COLOURS

from transferkit import UserError, study
from transferkit.cli import main
from transferkit.experiments import study_backbone
from transferkit.experiments.study import StudyRecorder
from transferkit.experiments.study_backbone import BackboneTrainer

SHOTS = {"target": "cyan,green", "backbone": "efficientnet_lite0", "shots": "2,all", "seeds": 2, "epochs": 2,
         "min_steps": 6, "verbose": False}


def _counting_passes(monkeypatch) -> list:
    """Every pass through the frozen backbone (computed or read from the store), as study_backbone makes it."""
    calls = []
    real = study_backbone.frozen_features

    def counted(*args, **kwargs):
        features, record = real(*args, **kwargs)
        calls.append(record)
        return features, record

    monkeypatch.setattr(study_backbone, "frozen_features", counted)
    return calls


@pytest.fixture(scope="module")
def shots_study(shapes, tmp_path_factory):
    """The uninterrupted backbone shots study (2 shot counts x 2 seeds x 2 arms), with its own cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg")))
        passes = _counting_passes(mp)
        out = tmp_path_factory.mktemp("studies") / "shots"
        result = study("shots", str(shapes), out=out, **SHOTS)
    return out, result, passes


def test_a_backbone_shots_study_trains_both_arms_on_features_computed_once(shots_study):
    out, result, passes = shots_study
    record = json.loads((out / "study.json").read_text())
    points = record["points"]
    assert len(points) == 2 * 2 * 2 and {p["arm"] for p in points.values()} == {"transfer", "scratch"}
    assert not any(name.startswith("baseA") for name in record["phases"])  # ImageNet is the source
    assert record["dataset"]["source"] == "efficientnet_lite0 with ImageNet weights"
    assert record["dataset"]["source_classes"] == []
    # One pass through the backbone for the whole study: every target image once, indexed by 4 transfer points.
    assert len(passes) == 1
    assert record["feature_pass"]["images"] == 12 + 6 and record["feature_pass"]["computed"] == 18
    assert record["feature_pass"]["input_size"] == 224
    transfer, scratch = points["transfer/shots=2/seed=1"], points["scratch/shots=2/seed=1"]
    assert transfer["train_samples"] == scratch["train_samples"] == 4 and transfer["steps"] >= 6
    assert transfer["trainable"] == 1280 * 256 + 256 + 256 * 2 + 2  # the new head alone
    assert scratch["trainable"] > 3_000_000  # the whole backbone, from random weights
    assert points["transfer/shots=all/seed=0"]["train_samples"] == 12
    assert len(result.table) == 2 * 2 and any(line.startswith("With 2 images per class") for line in result.results["findings"])
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "efficientnet_lite0 with ImageNet weights" in html and "<li>" in html


def test_an_interrupted_backbone_shots_study_resumes_to_the_same_study_json(shots_study, shapes, tmp_path,
                                                                             monkeypatch):
    reference, _, _ = shots_study
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    passes = _counting_passes(monkeypatch)
    progress = StudyRecorder.record

    def stop_after_three(self, *args):
        progress(self, *args)
        if self.done == 3:
            raise KeyboardInterrupt  # as a second Ctrl-C: at once, after the third point was written

    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        mp.setattr(StudyRecorder, "record", stop_after_three)
        with pytest.raises(KeyboardInterrupt):
            study("shots", str(shapes), out=out, **SHOTS)
    assert len(json.loads((out / "study.json").read_text())["points"]) == 3
    study("shots", str(shapes), resume=out, **SHOTS)
    # The resumed study read the features back from the store; study.json keeps the first pass's record.
    assert [p["from_store"] for p in passes] == [False, True]

    def without_time(value):
        if isinstance(value, dict):
            return {k: without_time(v) for k, v in value.items()
                    if k not in ("seconds", "train_seconds", "created", "feature_cache_seconds", "environment",
                                 "images_per_second", "origin")}
        return [without_time(v) for v in value] if isinstance(value, list) else value

    a, b = (json.loads((d / "study.json").read_text()) for d in (out, reference))
    assert without_time(a) == without_time(b)


def test_a_backbone_study_stopped_before_its_first_point_keeps_the_first_passs_record(shots_study, shapes, tmp_path,
                                                                                      monkeypatch):
    """Stopped while its first point trained, after the backbone's pass: the resumed study read the features
    back from the store, and study.json says what the study did, computed 18 (was: computed 0, from the store)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    passes = _counting_passes(monkeypatch)

    def stop_before_recording(self, *args):
        raise KeyboardInterrupt

    out, options = tmp_path / "run", {**SHOTS, "arms": "transfer"}  # the same pass; no scratch arm to wait for
    with monkeypatch.context() as mp:
        mp.setattr(StudyRecorder, "record", stop_before_recording)
        with pytest.raises(KeyboardInterrupt):
            study("shots", str(shapes), out=out, **options)
    assert json.loads((out / "study.json").read_text())["points"] == {}
    study("shots", str(shapes), resume=out, **options)
    assert [p["from_store"] for p in passes] == [False, True]
    record = json.loads((out / "study.json").read_text())["feature_pass"]
    assert (record["computed"], record["from_store"]) == (18, False)
    assert record == shots_study[1].results["feature_pass"] | {k: record[k] for k in ("seconds", "images_per_second")}


def test_a_backbone_freeze_study_copies_the_first_stages(shapes, tmp_path, monkeypatch):
    """ResNet-18's stages (stem, layer1..4); A is its pretrained weights (here a fixed random draw, weights
    none), B the target classes. Each point's network is checked as it starts training."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    seen, on_frozen_output = {}, {}
    fit = BackboneTrainer._fit

    def look(self, point, model, *args, prepare=None, **kwargs):
        stem = model.features.conv1.weight
        seen[point.name] = (stem.detach().clone(), stem.requires_grad,
                            model.features.layer2[0].conv1.weight.requires_grad)

        def watched():
            trained, x_train, x_test = prepare()
            on_frozen_output[point.name] = (type(trained).__name__, tuple(x_train.shape[1:]))
            return trained, x_train, x_test

        return fit(self, point, model, *args, prepare=watched if prepare else None, **kwargs)

    monkeypatch.setattr(BackboneTrainer, "_fit", look)
    # fp32: in bf16 a random ResNet-18 on 16 px images diverged (nan loss) in some draws.
    result = study("freeze", str(shapes), target="cyan,green", backbone="resnet18", weights="none", cuts="1,2",
                   seeds=2, epochs=1, min_steps=3, precision="fp32", out=tmp_path / "freeze", verbose=False)
    points = result.results["points"]
    assert len(points) == 2 * (1 + 2 * 4)
    assert result.results["dataset"]["stages"] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    # AnB: the source's stem, frozen; BnB: baseB's trained stem, frozen; AnB+: the source's, trained on.
    for seed in (0, 1):
        anb, bnb, anb_plus = (seen[f"{arm}/cut=1/seed={seed}"] for arm in ("AnB", "BnB", "AnB+"))
        assert not anb[1] and not bnb[1] and anb_plus[1] and anb[2] and bnb[2]
        assert torch.equal(anb[0], anb_plus[0]) and not torch.equal(anb[0], bnb[0])
        assert not seen[f"AnB/cut=2/seed={seed}"][1] and seen[f"AnB/cut=2/seed={seed}"][2]
    # Frozen arms train the rest on the copied stages' output, computed once (16 px: the stem gives 64 x 4 x 4).
    assert sorted(on_frozen_output) == sorted(f"{arm}/cut={c}/seed={s}" for arm in ("AnB", "BnB") for c in (1, 2)
                                              for s in (0, 1))
    assert on_frozen_output["AnB/cut=1/seed=0"] == ("AfterCut", (64, 4, 4))
    # The source is the same for every seed (ImageNet, here weights none), baseB is each seed's own.
    assert torch.equal(seen["AnB/cut=1/seed=0"][0], seen["AnB/cut=1/seed=1"][0])
    assert not torch.equal(seen["BnB/cut=1/seed=0"][0], seen["BnB/cut=1/seed=1"][0])
    assert points["AnB/cut=1/seed=0"]["trainable"] < points["AnB+/cut=1/seed=0"]["trainable"] == points[
        "baseB/seed=0"]["trainable"]
    assert (tmp_path / "freeze" / "weights" / "baseB-seed=1.safetensors").is_file()
    assert len(result.results["findings"]) >= 3


@pytest.mark.parametrize("args, says", [
    (["freeze", "SHAPES", "--backbone", "resnet18", "--cuts", "2,6"],
     "--cuts 6: resnet18 has 5 stages (stem, layer1, layer2, layer3, layer4); give cuts from 1 to 5"),
    (["freeze", "SHAPES", "--backbone", "efficientnet_lite0", "--cuts", "10"],
     "--cuts 10: efficientnet_lite0 has 9 stages (stem, blocks.0, blocks.1, blocks.2, blocks.3, blocks.4, "
     "blocks.5, blocks.6, head); give cuts from 1 to 9"),
    (["shots", "SHAPES", "--backbone", "resnet9000"], "--backbone resnet9000: unknown; choose one of resnet18"),
    (["freeze", "SHAPES", "--backbone", "resnet9000"], "--backbone resnet9000: unknown; choose one of resnet18"),
    (["shots", "SHAPES", "--backbone", "resnet18", "--source", "amber,blue"],
     "--source: with --backbone resnet18 the source is the backbone's pretraining"),
    (["shots", "SHAPES", "--backbone", "resnet18", "--head", "reset"], "--head: with --backbone resnet18"),
    (["freeze", "SHAPES", "--backbone", "resnet18", "--filters", "8"], "--filters: with --backbone resnet18"),
    (["shots", "SHAPES", "--weights", "none"], "--weights is for --backbone"),
    (["shots", "SHAPES", "--backbone", "resnet18", "--weights", "none", "--seeds", "1"], "--seeds 1: a 95% interval"),
    (["shots", "SHAPES", "--backbone", "resnet18", "--weights", "none", "--shots", "7"],
     "--shots 7: class 'cyan' has only 6 training images"),
    (["shots", "mnist", "--backbone", "resnet18", "--weights", "none"],
     "--backbone resnet18: needs colour images; this data set has 1 channel(s)"),
])
def test_bad_backbone_study_options_are_one_line(shapes, tmp_path, monkeypatch, capsys, args, says):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path.parent / f"{tmp_path.name}-xdg"))
    args = [str(shapes) if a == "SHAPES" else a for a in args]
    with pytest.raises(SystemExit) as exit_info:
        main(["study", *args, "--limit", "100"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and says in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # refused before a study folder exists


def test_with_a_backbone_the_target_may_be_the_first_half():
    """No source classes with --backbone: --target 0-4 is no overlap with a default source (run and study)."""
    from transferkit.data import resolve_split

    names = list(COLOURS)
    assert resolve_split(None, "amber,blue", names, source_trained=False)[1] == [0, 1]
    with pytest.raises(UserError, match="share class"):
        resolve_split(None, "amber,blue", names)


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_lite0", "mobilenet_v3_small", "efficientnet_b0",
                                      "convnext_tiny"])
def test_the_network_after_a_cut_fed_the_frozen_stages_gives_the_whole_networks_output(backbone):
    """What a frozen freeze arm trains on the stored output of its copied stages is the whole network."""
    from transferkit.experiments.study_backbone import AfterCut
    from transferkit.models.stages import stage_pieces

    torch.manual_seed(0)
    model = study_backbone.BackboneClassifier(backbone, 3).eval()
    pieces = [piece for _, piece, _ in stage_pieces(backbone, model.features)]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        whole = model(x)
        for cut in (1, len(pieces) // 2, len(pieces)):
            after = AfterCut(backbone, model, cut).eval()(torch.nn.Sequential(*pieces[:cut])(x))
            assert torch.allclose(after, whole, atol=1e-5), (backbone, cut)


def test_an_interrupted_backbone_freeze_study_reads_baseB_again(shapes, tmp_path, monkeypatch):
    """Interrupted after seed 0's baseB: the resumed study reads it back from weights/ and its BnB copies from
    it, and AnB copies the same source (weights none: a random network drawn from --seed), to the same points
    as without the interruption."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    options = {"target": "cyan,green", "backbone": "resnet18", "weights": "none", "cuts": "2", "arms": "baseB,BnB,AnB",
               "seeds": 2, "epochs": 1, "min_steps": 3, "precision": "fp32", "verbose": False}
    study("freeze", str(shapes), out=tmp_path / "ref", **options)
    progress = StudyRecorder.record

    def stop_after_one(self, *args):
        progress(self, *args)
        if self.done == 1:
            raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(StudyRecorder, "record", stop_after_one)
        with pytest.raises(KeyboardInterrupt):
            study("freeze", str(shapes), out=tmp_path / "run", **options)
    torch.manual_seed(1234)  # what ran before in the process changes nothing: A (weights none) is drawn from --seed
    study("freeze", str(shapes), resume=tmp_path / "run", **options)

    def accuracies(folder):
        points = json.loads((folder / "study.json").read_text())["points"]
        return {name: (p["test_accuracy"], p["test_loss"], p["trainable"]) for name, p in points.items()}

    assert accuracies(tmp_path / "run") == accuracies(tmp_path / "ref") and len(accuracies(tmp_path / "ref")) == 6


def test_a_backbone_study_trains_in_one_process_and_refuses_more_jobs(shapes, tmp_path):
    with pytest.raises(UserError, match=r"^--jobs 2: a study with --backbone trains its points in one process"):
        study("shots", str(shapes), backbone="resnet18", weights="none", jobs=2, save=False, verbose=False)

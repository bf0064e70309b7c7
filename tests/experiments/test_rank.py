"""transferkit rank on small generated data: the pretrained backbone above its random-weights control, the run
folder and report, the feature store, --layers, --verify, and bad input."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import transferkit
from transferkit import UserError, rank
from transferkit.cli import main
from transferkit.models import BackboneClassifier
from transferkit.models.stages import PooledStages


def write_digits(root: Path, classes: int, train: int, val: int) -> Path:
    """MNIST digits (shipped with transferkit) as PNG class folders: pretrained features separate them."""
    mnist = np.load(Path(transferkit.__file__).parent / "data" / "mnist.npz")
    for split, x, y, n in (("train", mnist["x_train"], mnist["y_train"], train),
                           ("val", mnist["x_test"], mnist["y_test"], val)):
        for c in range(classes):
            (root / split / str(c)).mkdir(parents=True)
            for i, index in enumerate(np.flatnonzero(y == c)[:n]):
                Image.fromarray(x[index]).save(root / split / str(c) / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return write_digits(tmp_path_factory.mktemp("digits") / "digits", 4, 20, 10)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("xdg")


@pytest.fixture(scope="module")
def ranked(digits, cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "rank"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(cache))
        main(["rank", str(digits), "--backbones", "efficientnet_lite0", "--image-size", "64", "--precision", "fp32",
              "--verify", "--epochs", "3", "--out", str(out)])
    return out


def test_the_pretrained_backbone_ranks_above_its_random_weights(ranked):
    results = json.loads((ranked / "results.json").read_text())
    assert results["experiment"] == "rank"
    assert results["ranking"] == ["efficientnet_lite0", "efficientnet_lite0 (random weights, control)"]
    pretrained, control = results["candidates"]
    assert control["control"] and control["weights"] == "none"
    for score in ("logme", "knn", "probe"):  # the control last on every score, and by a margin
        assert pretrained["scores"][score] > control["scores"][score] + 0.05, score
    assert pretrained["verified"]["accuracy"] > control["verified"]["accuracy"]
    assert results["kendall_tau"] == {"logme": 1.0, "knn": 1.0, "probe": 1.0, "ranking": 1.0}
    assert pretrained["feature_size"] == 1280 and pretrained["params"] == sum(
        p.numel() for p in BackboneClassifier("efficientnet_lite0", 2).features.parameters())
    assert set(pretrained["seconds"]) == {"logme", "knn", "probe"}
    assert "Start from efficientnet_lite0" in results["recommendation"]


def test_run_folder_and_report(ranked):
    table = json.loads((ranked / "rank.json").read_text())
    assert [r["name"] for r in table] == json.loads((ranked / "results.json").read_text())["ranking"]
    assert table[0]["rank"] == 1 and table[0]["verified"] is not None
    assert (ranked / "rank.png").stat().st_size > 1000
    assert json.loads((ranked / "status.json").read_text())["status"] == "complete"
    page = (ranked / "report.html").read_text()
    assert 'data-candidate="efficientnet_lite0"' in page and "Kendall" in page and "src=\"http" not in page
    (ranked / "report.html").unlink()
    main(["report", str(ranked)])  # rebuilt from the folder's files
    assert (ranked / "report.html").read_text().count("data-candidate=") == 2


def test_a_second_rank_reads_the_features_from_the_store(ranked, digits, cache, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    again = rank(digits, backbones="efficientnet_lite0", image_size=64, precision="fp32", save=False, verbose=False)
    first = json.loads((ranked / "results.json").read_text())["candidates"]
    assert len(first) == 2  # the candidate and its control, each read back
    for row, before in zip(again.results["candidates"], first, strict=True):
        assert row["feature_pass"]["from_store"] is True and row["scores"] == before["scores"]


def test_layers_scores_every_stage(digits, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    stages = rank(digits, backbones="resnet18:none", layers=True, image_size=32, precision="fp32", save=False,
                  verbose=False)
    rows = {r["layer"]: r for r in stages.results["candidates"]}
    assert list(rows) == ["layer1", "layer2", "layer3", "layer4"]
    assert [r["feature_size"] for r in rows.values()] == [64, 128, 256, 512]
    assert len({r["scores"]["logme"] for r in rows.values()}) == 4  # each stage's own features


@pytest.mark.parametrize("backbone, names", [
    ("efficientnet_lite0", [f"blocks.{i}" for i in range(7)] + ["head"]),
    ("resnet18", ["layer1", "layer2", "layer3", "layer4"])])
def test_the_last_pooled_stage_is_the_whole_backbone(backbone, names):
    features = BackboneClassifier(backbone, 2).features.eval()
    stages = PooledStages.of(backbone, features, 32)
    x = torch.randn(2, 3, 32, 32)
    split = stages.split(stages(x))
    assert list(split) == names
    assert torch.allclose(split[names[-1]], features(x), atol=1e-5)


def test_bad_input_is_refused_in_one_line(digits, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    with pytest.raises(UserError, match="unknown; choose among resnet18, .*efficientnet_lite0"):
        rank(digits, backbones="resnet5")
    with pytest.raises(UserError, match="--layers scores the stages of one backbone"):
        rank(digits, backbones="resnet18:none,efficientnet_lite0", layers=True)
    few = write_digits(tmp_path / "few", 2, 1, 1)
    with pytest.raises(UserError, match=r"class\(es\) 0 \(1\), 1 \(1\) have fewer than 2 training images"):
        rank(few, backbones="resnet18:none", image_size=32, save=False, verbose=False)
    one = write_digits(tmp_path / "one", 1, 3, 2)
    with pytest.raises(UserError, match="only one class"):
        rank(one, backbones="resnet18:none", image_size=32, save=False, verbose=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # torchvision's weights absent, no download here
    with pytest.raises(SystemExit) as exit_info:
        main(["rank", str(digits), "--backbones", "resnet18", "--image-size", "32", "--out", str(tmp_path / "r")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: no candidate's weights could be loaded: ") and "resnet18-" in error
    assert len(error.splitlines()) == 1


def test_an_interrupted_rank_resumes_to_the_same_table(digits, cache, tmp_path, monkeypatch, capsys):
    """Ctrl-C (a real SIGINT, sent in process at the 5th step of the verified head) and --resume."""
    from conftest import signalled_at

    from transferkit.training import CHECKPOINT_FILE

    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    args = ["rank", str(digits), "--backbones", "efficientnet_lite0", "--image-size", "64", "--precision", "fp32",
            "--verify", "--epochs", "40", "--quiet"]
    main([*args, "--out", str(tmp_path / "ref")])
    out = tmp_path / "run"
    capsys.readouterr()
    with signalled_at(5), pytest.raises(SystemExit) as stopped:
        main([*args, "--out", str(out)])
    assert stopped.value.code == 130 and f"--resume {out}" in capsys.readouterr().err
    assert json.loads((out / "status.json").read_text())["status"] == "interrupted"
    assert (out / CHECKPOINT_FILE).is_file()  # a head under way in --verify
    main([*args, "--resume", str(out)])
    a, b = (json.loads((d / "results.json").read_text()) for d in (out, tmp_path / "ref"))
    assert [c["scores"] for c in a["candidates"]] == [c["scores"] for c in b["candidates"]]
    assert [c["verified"]["accuracy"] for c in a["candidates"]] == [c["verified"]["accuracy"] for c in b["candidates"]]


def test_refusals_leave_no_folder_and_score_nothing(digits, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    with pytest.raises(UserError, match="efficientnet_lite0:imagenet given twice"):
        rank(digits, backbones="efficientnet_lite0,efficientnet_lite0")
    out = tmp_path / "r"
    with pytest.raises(UserError):  # a data error: read before the folder is made, so the same --out works next
        rank(tmp_path / "no-such-folder", backbones="resnet18:none", out=out)
    assert not out.exists()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(UserError, match="no candidate's weights could be loaded"):
        rank(digits, backbones="resnet18", image_size=32, out=out)
    assert "random weights" not in capsys.readouterr().out  # the control was not scored for nothing


def test_a_failed_control_head_is_flagged_and_left_out_of_the_taus(digits, tmp_path, monkeypatch):
    # A head trained for zero useful steps (lr 1e-9) cannot beat the most common class: flagged, not a point.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    result = rank(digits, backbones="efficientnet_lite0,resnet18:none", image_size=32, precision="fp32",
                  verify=True, epochs=1, lr=1e-9, control=False, out=tmp_path / "r", verbose=False)
    verified = [r["verified"] for r in result.results["candidates"]]
    assert all(v["failed"] == (v["accuracy"] <= v["chance"]) for v in verified)
    assert any(v["failed"] for v in verified)
    assert "kendall_tau_with_failed" in result.results
    page = (tmp_path / "r" / "report.html").read_text()
    assert 'data-failed="true"' in page and 'id="taus-with-failed"' in page

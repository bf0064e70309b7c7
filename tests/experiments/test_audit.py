"""transferkit audit on small folders of real digits with planted duplicates, leakage, flipped labels and an
outlier: each is found, and a clean folder is not flagged beyond the stated rates (docs/audit.md)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cleanlab")

from transferkit import UserError, audit  # noqa: E402
from transferkit.cli import main  # noqa: E402
from transferkit.experiments.audit_checks import exact_duplicates, nearest_neighbours  # noqa: E402

CLASSES, TRAIN, VAL, SIZE = 4, 30, 8, 32
FLIPPED = [("train/3/1.png", "0"), ("train/3/2.png", "1"), ("train/2/3.png", "1")]


def write_digits(root: Path) -> Path:
    """train/ and val/ of 4 digit classes (30 + 8 real scikit-learn digits each) as 32 px PNGs."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * 255 / 16).astype(np.uint8)
    for c in range(CLASSES):
        indices = np.flatnonzero(digits.target == c)
        for split, chosen in (("train", indices[:TRAIN]), ("val", indices[TRAIN:TRAIN + VAL])):
            (root / split / str(c)).mkdir(parents=True)
            for i, index in enumerate(chosen):
                img = Image.fromarray(images[index]).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
                img.save(root / split / str(c) / f"{i}.png")
    return root


def plant(root: Path) -> None:
    """An exact duplicate in train, an exact and a resized copy of train images in val, three flipped labels, one
    image of noise and one file that is not an image."""
    from PIL import Image

    shutil.copy(root / "train/0/0.png", root / "train/0/copy.png")
    shutil.copy(root / "train/1/0.png", root / "val/1/leak-exact.png")
    Image.open(root / "train/2/0.png").resize((40, 40), Image.Resampling.BILINEAR).save(root / "val/2/leak-resized.png")
    for path, to in FLIPPED:
        (root / path).rename(root / "train" / to / f"flipped-{Path(path).parent.name}-{Path(path).name}")
    noise = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "train/1/noise.png")
    (root / "train/0/broken.png").write_bytes(b"not a png")


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, dict]:
    root = write_digits(tmp_path_factory.mktemp("audit") / "digits")
    plant(root)
    out = root.parent / "audit"
    with pytest.MonkeyPatch.context() as mp:  # the feature store of this test, not the user's
        mp.setenv("XDG_CACHE_HOME", str(root.parent / "xdg"))
        result = audit(root, out=out, image_size=64, verbose=False, device="cpu")
    return out, result.results


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def test_planted_duplicates_and_leakage_are_found(planted):
    _, results = planted
    f = results["findings"]
    assert [[i["path"] for i in g] for g in f["exact_duplicates"]] == [["train/0/0.png", "train/0/copy.png"],
                                                                      ["train/1/0.png", "val/1/leak-exact.png"]]
    leaks = {leak["images"][1]["path"]: leak for leak in f["leakage"]}
    assert set(leaks) == {"val/1/leak-exact.png", "val/2/leak-resized.png"}  # found, and nothing else
    assert leaks["val/1/leak-exact.png"]["kind"] == "exact" and leaks["val/2/leak-resized.png"]["kind"] == "near"
    assert all(leak["images"][0]["split"] == "train" for leak in f["leakage"])


def test_flipped_labels_and_the_outlier_are_found(planted):
    _, results = planted
    f = results["findings"]
    issues = {i["path"]: i for i in f["label_issues"]}
    back = 0
    for path, to in FLIPPED:
        name = f"train/{to}/flipped-{Path(path).parent.name}-{Path(path).name}"
        assert name in issues, (name, sorted(issues))
        assert issues[name]["label"] == to and issues[name]["suggested"] != to
        back += issues[name]["suggested"] == Path(path).parent.name  # the class it came from
    assert back >= 2
    assert len(issues) <= len(FLIPPED) + 0.05 * results["data"]["images"]
    assert "train/1/noise.png" in {o["path"] for o in f["outliers"]}
    assert f["unreadable"] == [{"path": "train/0/broken.png", "split": "train", "reason": f["unreadable"][0]["reason"]}]


def test_files_are_strict_json_an_editable_csv_and_a_page(planted):
    out, results = planted
    assert json.loads((out / "audit.json").read_text(), parse_constant=lambda c: pytest.fail(c)) == results
    rows = list(csv.DictReader((out / "issues.csv").open()))
    by_path = {r["path"]: r for r in rows}
    assert by_path["val/1/leak-exact.png"]["action"] == "exclude"
    assert by_path["val/1/leak-exact.png"]["partner"] == "train/1/0.png"
    assert by_path["train/0/copy.png"]["kind"] == "exact_duplicate"
    assert by_path["train/1/noise.png"]["kind"] in ("outlier", "label_issue")
    html = (out / "report.html").read_text()
    assert 'data-path="val/2/leak-resized.png"' in html and "data:image/png;base64," in html
    assert results["facts"]["images_per_class"]["0"] == {"train": TRAIN + 1 + 1, "val": VAL}
    assert results["facts"]["formats"] == {"PNG": results["data"]["images"]}


def test_a_clean_folder_is_not_flagged_beyond_the_stated_rates(tmp_path):
    root = write_digits(tmp_path / "clean")
    result = audit(root, save=False, image_size=64, verbose=False, device="cpu")
    counts, n = result.results["counts"], result.results["data"]["images"]
    assert counts["leakage"] == counts["exact_duplicates"] == counts["near_duplicates"] == 0
    assert counts["label_issues"] <= 0.05 * n  # docs/audit.md: at most 5% of a clean folder
    assert counts["outliers"] <= 0.02 * n


def test_cli_writes_the_folder_and_refuses_bad_options(tmp_path, capsys):
    root = write_digits(tmp_path / "small")
    out = tmp_path / "out"
    main(["audit", str(root), "--out", str(out), "--image-size", "64", "--device", "cpu", "--json"])
    assert json.loads(capsys.readouterr().out)["counts"]["leakage"] == 0
    assert sorted(p.name for p in out.iterdir()) == ["audit.json", "issues.csv", "report.html"]
    for args, message in ((["--out", str(out)], "--force to write into it"),
                          (["--near-threshold", "1.5"], "--near-threshold must be above 0 and at most 1")):
        with pytest.raises(SystemExit) as e:
            main(["audit", str(root), *args])
        assert e.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(UserError, match="--folds"):
        audit(root, folds=1, save=False)
    for f in [*(root / "train/3").iterdir()][1:] + [*(root / "val/3").iterdir()]:
        f.unlink()
    with pytest.raises(UserError, match=r"class\(es\) 3 \(1\) have fewer than 2 readable images"):
        audit(root, save=False, image_size=64, verbose=False, device="cpu")


def test_neighbours_are_blocked_and_exact(monkeypatch):
    import torch

    from transferkit.experiments import audit_checks

    monkeypatch.setattr(audit_checks, "BLOCK", 7)  # several blocks, the last one short
    f = torch.randn(30, 5)
    indices, sims = nearest_neighbours(f, 3)
    full = torch.nn.functional.normalize(f, dim=1) @ torch.nn.functional.normalize(f, dim=1).T
    full.fill_diagonal_(-2)
    assert (indices == full.topk(3, dim=1).indices.numpy()).all()
    assert np.allclose(sims, full.topk(3, dim=1).values.numpy(), atol=1e-6)
    assert exact_duplicates(["a", "b", "a", "c", "b"]) == [[0, 2], [1, 4]]


def test_without_cleanlab_the_message_names_the_extra(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cleanlab" else real(name, *a))
    with pytest.raises(UserError, match=r'pip install "transferkit\[audit\]"'):
        audit(tmp_path, save=False)


@pytest.mark.filterwarnings("ignore:.*could not be decoded")
def test_finetune_exclude_leaves_out_the_files_marked_exclude(planted, tmp_path):
    from transferkit import finetune

    out, results = planted
    root = Path(results["data"]["origin"])
    rows = list(csv.DictReader((out / "issues.csv").open()))
    marked = {r["path"] for r in rows if r["action"] == "exclude" and r["kind"] != "unreadable"}
    assert {"val/1/leak-exact.png", "val/2/leak-resized.png", "train/0/copy.png"} <= marked
    options = dict(backbone="resnet18", weights="none", image_size=32, epochs=1, batch_size=8, save=False,
                   verbose=False)
    plain = finetune(root, **options).results["dataset"]
    excluded = finetune(root, exclude=str(out / "issues.csv"), **options).results["dataset"]
    assert set(excluded["excluded"]) == marked | {"train/0/broken.png"}
    in_val = sum(p.startswith("val/") for p in marked)
    assert excluded["val_samples"] == plain["val_samples"] - in_val
    assert excluded["train_samples"] == plain["train_samples"] - (len(marked) - in_val)
    assert "excluded" not in plain
    (tmp_path / "bad.csv").write_text("file,what\na,b\n")
    with pytest.raises(UserError, match="no 'path' column"):
        finetune(root, exclude=str(tmp_path / "bad.csv"), **options)


@pytest.mark.filterwarnings("ignore:.*could not be decoded")
def test_run_exclude_leaves_out_the_files_marked_exclude(planted):
    from transferkit import run_split

    out, results = planted
    root = results["data"]["origin"]
    options = dict(epochs=1, batch_size=16, save=False, verbose=False, device="cpu")
    plain = run_split(root, **options).results["dataset"]
    excluded = run_split(root, exclude=str(out / "issues.csv"), **options).results["dataset"]
    listed = {r["path"] for r in csv.DictReader((out / "issues.csv").open()) if r["action"] == "exclude"}
    assert set(excluded["excluded"]) == listed
    in_val = sum(p.startswith("val/") for p in listed)
    assert excluded["val_samples"] == plain["val_samples"] - in_val  # val/: the split the run validates on
    assert excluded["train_samples"] == plain["train_samples"] - (len(listed) - in_val - 1)  # broken.png never read
    with pytest.raises(UserError, match="--exclude is for image folder data sets"):
        run_split("mnist", exclude=str(out / "issues.csv"), **options)

"""--limit N spread evenly over the classes, the same for finetune, run, study and rank (data/splits.py's
limit_per_class): each class gets N / k, a small class gives what it has and the others share the rest."""

import json

import numpy as np
import pytest

from transferkit.cli import main
from transferkit.data import split_by_class
from transferkit.data.arrays import ArrayDataset
from transferkit.data.splits import limit_per_class
from transferkit.experiments.image_data import read_image_data


def counts(labels, limit):
    labels = np.asarray(labels)
    return np.bincount(labels[limit_per_class(labels, limit)], minlength=labels.max() + 1).tolist()


def test_each_class_gets_its_share():
    sorted_by_class = np.repeat(np.arange(10), 30)  # as folder data sets list their files
    assert counts(sorted_by_class, 50) == [5] * 10
    assert counts(sorted_by_class, 55) == [5] * 5 + [6] * 5  # the remainder shared, one each
    assert counts([0] * 2 + [1] * 100 + [2] * 100, 30) == [2, 14, 14]  # the small class gives what it has
    assert counts([0] * 3 + [1] * 5 + [2] * 100, 60) == [3, 5, 52]
    assert counts(sorted_by_class, None) == [30] * 10 and counts(sorted_by_class, 1000) == [30] * 10


def test_the_choice_is_a_fixed_random_draw_kept_in_order():
    labels = np.repeat(np.arange(4), 25)
    keep = limit_per_class(labels, 20)
    assert np.array_equal(keep, limit_per_class(labels, 20)) and np.all(np.diff(keep) > 0)
    assert not np.array_equal(keep[:5], np.arange(5))  # not the first images of each class


@pytest.mark.parametrize("seed", range(20))
def test_the_spread_is_as_even_as_the_classes_allow(seed):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(k := int(rng.integers(2, 12))), rng.integers(1, 40, size=k))
    limit = int(rng.integers(1, len(labels) + 5))
    keep = limit_per_class(labels, limit)
    assert len(keep) == min(limit, len(labels)) and len(set(keep.tolist())) == len(keep)
    have, got = np.bincount(labels, minlength=k), np.bincount(labels[keep], minlength=k)
    # a class short of its images never has 2 fewer than another class: nothing could be moved to even them
    short = got < have
    assert not short.any() or got[short].min() >= got.max() - 1


def test_run_and_study_limit_every_class_alike(arrays):
    data = ArrayDataset("mnist", arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                        tuple(map(str, range(10))), "test arrays")
    split = split_by_class(data, [5, 6, 7, 8, 9], limit=25)
    assert np.bincount(split.y_train).tolist() == [5] * 5 and np.bincount(split.y_test).tolist() == [5] * 5


@pytest.fixture(scope="module")
def ten_digits(tmp_path_factory):
    """10 classes of 30 real digits in train/ and in val/: `--limit 50` drawn at random over all images (as
    before) left class 9 of train/ with 1 image, which rank refused."""
    from conftest import write_sklearn_digits

    root = tmp_path_factory.mktemp("ten") / "digits"
    for split in ("train", "val"):
        write_sklearn_digits(root / split, per_class=30, size=8)
    return root


@pytest.mark.parametrize("stream", ["never", "always"])
def test_finetune_and_rank_read_every_class_alike(ten_digits, tmp_path, monkeypatch, stream):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    data = read_image_data(str(ten_digits), 0.2, 0, 50, stream, 8, 1, None, 0)
    for _, labels in (data.train, data.val):
        assert np.bincount(labels, minlength=10).tolist() == [5] * 10
    data.close()


def test_rank_with_a_limit_on_ten_classes(ten_digits, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    main(["rank", str(ten_digits), "--backbones", "efficientnet_lite0", "--no-control", "--image-size", "32",
          "--limit", "50", "--precision", "fp32", "--out", str(tmp_path / "rank"), "--quiet"])
    dataset = json.loads((tmp_path / "rank" / "results.json").read_text())["dataset"]
    assert dataset["train_samples"] == 50 and dataset["val_samples"] == 50

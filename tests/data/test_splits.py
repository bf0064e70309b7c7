import numpy as np
import pytest

from transferkit.data import ArrayDataset, parse_classes, resolve_split, split_by_class
from transferkit.errors import UserError

DIGITS = [str(d) for d in range(10)]
CIFAR = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.mark.parametrize("spec, expected", [
    ("0-4", [0, 1, 2, 3, 4]),
    ("5-9", [5, 6, 7, 8, 9]),
    ("5,7,9", [5, 7, 9]),
    ("9-7,0", [9, 8, 7, 0]),
    (" 1 , 3-4 ", [1, 3, 4]),
    (range(5), [0, 1, 2, 3, 4]),
])
def test_parse_digits(spec, expected):
    assert parse_classes(spec, DIGITS) == expected


def test_parse_names_and_indices():
    assert parse_classes("dog,frog", CIFAR) == [5, 6]
    assert parse_classes("airplane-cat", CIFAR) == [0, 1, 2, 3]
    assert parse_classes("0,truck", CIFAR) == [0, 9]


@pytest.mark.parametrize("spec, message", [
    ("", "--source is empty"),
    (" , ", "--source is empty"),
    ("0-4,12", "unknown class '12'"),
    ("cat", "unknown class 'cat'"),
    ("1,1", "listed twice"),
    ("0-3,2", "listed twice"),
])
def test_parse_errors(spec, message):
    with pytest.raises(UserError, match=message):
        parse_classes(spec, DIGITS, "--source")


def test_overlap_is_refused():
    with pytest.raises(UserError, match="share class"):
        resolve_split("0-5", "5-9", DIGITS)


def test_split_remaps_labels_in_given_order(arrays):
    data = ArrayDataset("t", arrays["x_train"], arrays["y_train"].astype(np.int64), arrays["x_test"],
                        arrays["y_test"].astype(np.int64), tuple(DIGITS), "test")
    split = split_by_class(data, [7, 5])
    original = arrays["y_train"][np.isin(arrays["y_train"], [5, 7])]
    assert split.class_names == ("7", "5")
    assert split.y_train.tolist() == [0 if d == 7 else 1 for d in original]
    assert np.array_equal(split.x_train, arrays["x_train"][np.isin(arrays["y_train"], [5, 7])])
    limited = split_by_class(data, [7, 5], limit=3)
    assert len(limited.y_train) == 3 and len(limited.y_test) == 3


def test_limit_samples_across_classes_not_the_first_images():
    # Folder data sets come sorted by class: the first N images would all be one class.
    y = np.repeat(np.arange(4), 50)
    data = ArrayDataset("t", np.zeros((200, 8, 8), np.uint8), y, np.zeros((200, 8, 8), np.uint8), y,
                        tuple("abcd"), "test")
    limited = split_by_class(data, [0, 1, 2, 3], limit=40)
    assert len(set(limited.y_train.tolist())) == 4
    assert np.array_equal(limited.y_train, split_by_class(data, [0, 1, 2, 3], limit=40).y_train)  # stable


@pytest.mark.parametrize("source, target, names, message", [
    (None, None, ["cat", "dog", "ship"], r"--source \(by default, half of the 3 classes\) holds only cat; a classifier "
                                          r"needs 2 classes or more"),
    ("0-4", "5", DIGITS, "--target holds only 5"),
    ("3", "5-9", DIGITS, "--source holds only 3"),
])
def test_a_phase_of_one_class_is_refused(source, target, names, message):
    with pytest.raises(UserError, match=message):
        resolve_split(source, target, names)


def test_a_backbone_run_needs_two_target_classes_only():
    assert resolve_split(None, None, ["cat", "dog", "ship"], source_trained=False) == ([0], [1, 2])
    with pytest.raises(UserError, match="--target holds only ship"):
        resolve_split("cat,dog", "ship", ["cat", "dog", "ship"], source_trained=False)

import pytest
import torch

from transferkit import SplitResult, UserError, run_split

QUICK = dict(limit=300, epochs=1, save=False, verbose=False)


@pytest.fixture(scope="module")
def quick_run() -> SplitResult:
    return run_split("mnist", source=range(5), target=range(5, 10), **QUICK)


def test_transfer_leaves_feature_weights_bitwise_unchanged(quick_run):
    source, transfer = quick_run.models["source"], quick_run.models["transfer"]
    for (name, a), (_, b) in zip(source.features.state_dict().items(), transfer.features.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    # ... while the classifier did learn.
    assert not torch.equal(source.classifier.dense1.weight, transfer.classifier.dense1.weight)


def test_result_carries_what_results_json_carries(quick_run):
    assert list(quick_run.phases) == ["source", "transfer", "scratch"]
    assert quick_run.results["phases"]["transfer"]["params"] == {
        "total": 600_165, "trainable": 590_597, "non_trainable": 9_568}
    assert quick_run.phases["source"].classes == ["0", "1", "2", "3", "4"]
    assert quick_run.results["config"]["train"]["epochs"] == 1
    assert set(quick_run.figures) == {"samples", "curves", "training_time", "misclassified"}
    assert "transfer vs scratch" in quick_run.summary()


def test_same_seed_same_metrics(quick_run):
    again = run_split("mnist", **QUICK)
    for phase, result in quick_run.phases.items():
        assert [r.to_dict() | {"seconds": 0} for r in again.phases[phase].history] == \
               [r.to_dict() | {"seconds": 0} for r in result.history]


def test_reverse_direction_with_reset_head():
    result = run_split("mnist", source="5-9", target="0-4", head="reset", **QUICK)
    assert result.phases["transfer"].classes == ["0", "1", "2", "3", "4"]


def test_different_class_counts_reuse_dense_layers():
    result = run_split("mnist", source="0-5", target="7,8", **QUICK)
    source, transfer = result.models["source"], result.models["transfer"]
    assert transfer.num_classes == 2
    assert transfer.classifier.dense1.weight.shape == source.classifier.dense1.weight.shape


@pytest.mark.parametrize("options, message", [
    (dict(source="0-4", target="4-9"), "share class"),
    (dict(source="0-4", target="10"), "unknown class '10'"),
    (dict(source="", target="5-9"), "--source is empty"),
    (dict(epochs=0), "--epochs must be at least 1"),
    (dict(banana=1), "unknown option 'banana'"),
])
def test_bad_options_fail_before_training(options, message):
    with pytest.raises(UserError, match=message):
        run_split("mnist", **{**QUICK, **options})


def test_every_seed_is_derived_from_named_parts_without_collisions():
    from transferkit.experiments.seeds import derive_seed

    assert derive_seed(7) == 7 and derive_seed(7, phase=2) == 7002
    points = {derive_seed(s, repeat=r, arm=a, size=x) for s in (0, 1) for r in (0, 999) for a in (0, 15)
              for x in (0, 99_999)}
    assert len(points) == 2 * 2 * 2 * 2
    with pytest.raises(ValueError, match="arm=16"):
        derive_seed(0, repeat=0, arm=16)

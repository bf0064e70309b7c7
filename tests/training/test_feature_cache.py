import torch

from transferkit import run_split
from transferkit.config import ModelConfig
from transferkit.models import SeedCNN
from transferkit.training import compute_features, split_frozen


def test_split_keeps_parameter_free_tail_apart():
    model = SeedCNN(ModelConfig(), 1, (28, 28), 5)
    prefix, tail = split_frozen(model.features)
    assert [n for n, _ in prefix.named_children()] == ["conv1", "relu1", "conv2", "relu2", "pool"]
    assert [n for n, _ in tail.named_children()] == ["dropout", "flatten"]
    x = torch.rand(3, 1, 28, 28)
    model.eval()
    # The cache runs channels-last, training NCHW: equal up to float summation order.
    assert torch.allclose(tail(compute_features(prefix, x, batch_size=2)), model.features(x), atol=1e-6)


def test_training_on_cache_equals_training_through_frozen_layers():
    # Dropout off, so both paths see identical inputs; only float summation order may differ.
    options = dict(limit=256, epochs=2, batch_size=64, feature_dropout=0.0, classifier_dropout=0.0,
                   save=False, verbose=False)
    cached = run_split("mnist", feature_cache=True, **options)
    direct = run_split("mnist", feature_cache=False, **options)
    a, b = cached.models["transfer"].state_dict(), direct.models["transfer"].state_dict()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5, rtol=1e-4), name
    assert cached.phases["transfer"].feature_cache_seconds is not None
    assert direct.phases["transfer"].feature_cache_seconds is None

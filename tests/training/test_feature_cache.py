import copy

import pytest
import torch
from torch import nn

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
    cached = run_split("mnist", feature_cache=True, scratch=False, **options)  # the transfer phase is the one
    direct = run_split("mnist", feature_cache=False, scratch=False, **options)
    a, b = cached.models["transfer"].state_dict(), direct.models["transfer"].state_dict()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5, rtol=1e-4), name
    assert cached.phases["transfer"].feature_cache_seconds is not None
    assert direct.phases["transfer"].feature_cache_seconds is None


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v3_small", "efficientnet_lite0"])
def test_folding_batchnorm_keeps_the_features(backbone):
    from transferkit.models import BackboneClassifier
    from transferkit.training.fusion import fold_batchnorm

    torch.manual_seed(0)
    model = BackboneClassifier(backbone, 3).features.eval()
    for m in model.modules():  # statistics other than the defaults, so folding has something to do
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.weight.data.uniform_(0.5, 1.5)
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        folded = fold_batchnorm(copy.deepcopy(model), x[:2])
        assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
        torch.testing.assert_close(folded(x), expected, rtol=1e-4, atol=1e-4)


def test_feature_pass_progress_counts_on_across_data_sets_even_where_a_stream_skips(tmp_path, monkeypatch):
    import io

    from rich.console import Console

    from transferkit.experiments.feature_pass import frozen_features
    from transferkit.experiments.runtime import Runtime
    from transferkit.training import resolve_precision
    from transferkit.training.distributed import Distributed

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    class ShortStream:  # 40 files listed, 4 of them unreadable: 36 images come out, as a StreamPass gives them
        def __len__(self):
            return 40

        def __iter__(self):
            for n in (16, 16, 4):
                yield torch.rand(n, 3, 8, 8), torch.zeros(n, dtype=torch.int64)

    log = io.StringIO()
    console = Console(file=log, force_terminal=False, width=200)
    prefix = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    runtime = Runtime(Distributed(), resolve_precision("fp32"), console, lambda: False, eval_batch_size=16)
    (stream, tensor), record = frozen_features("tiny", prefix, [ShortStream(), torch.rand(60, 3, 8, 8)], "id", 8,
                                               runtime)
    assert (len(stream), len(tensor), record["images"]) == (36, 60, 100)
    counts = [int(line.split()[2].split("/")[0]) for line in log.getvalue().splitlines()
              if line.startswith("feature pass:")]
    assert counts == sorted(counts) and counts[-1] == 100  # never back to the start, ends at the whole

import math

import torch

from transferkit.config import ModelConfig
from transferkit.models import SeedCNN, count_params
from transferkit.training import freeze


def test_parameter_counts_match_keras_summary():
    model = SeedCNN(ModelConfig(), 1, (28, 28), 5)
    assert count_params(model).to_dict() == {"total": 600_165, "trainable": 600_165, "non_trainable": 0}
    freeze(model.features)
    assert count_params(model).to_dict() == {"total": 600_165, "trainable": 590_597, "non_trainable": 9_568}


def test_keras_initialisation():
    torch.manual_seed(0)
    model = SeedCNN(ModelConfig(), 1, (28, 28), 5)
    layers = {"conv1": (model.features.conv1, 9, 32 * 9), "conv2": (model.features.conv2, 32 * 9, 32 * 9),
              "dense1": (model.classifier.dense1, 4608, 128), "dense2": (model.classifier.dense2, 128, 5)}
    for name, (layer, fan_in, fan_out) in layers.items():
        bound = math.sqrt(6 / (fan_in + fan_out))  # Glorot-uniform
        assert torch.count_nonzero(layer.bias) == 0, name
        assert layer.weight.abs().max() <= bound, name
    # Uniform on [-b, b] has standard deviation b / sqrt(3); PyTorch's own default would be far smaller here.
    w = model.classifier.dense1.weight
    assert abs(w.std().item() - math.sqrt(6 / (4608 + 128)) / math.sqrt(3)) < 1e-3


def test_sizes_are_configurable_and_spec_rebuilds():
    cfg = ModelConfig(filters=8, kernel_size=5, pool_size=3, dense_units=16, feature_dropout=0.1,
                      classifier_dropout=0.2)
    model = SeedCNN(cfg, 3, (32, 32), 4)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 4)
    assert model.classifier.dense1.in_features == 8 * 8 * 8  # (32 - 8) // 3 = 8
    rebuilt = SeedCNN.from_spec(model.spec())
    assert rebuilt.spec() == model.spec()


def test_reset_classifier():
    model = SeedCNN(ModelConfig(), 1, (28, 28), 5)
    model.reset_classifier(3)
    assert model.num_classes == 3 and model(torch.zeros(1, 1, 28, 28)).shape == (1, 3)

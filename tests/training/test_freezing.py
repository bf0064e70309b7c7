import torch
from torch import nn

from transferkit.config import ModelConfig, TrainConfig
from transferkit.models import SeedCNN
from transferkit.training import freeze, make_optimizer, train_mode, trainable_parameters


def test_frozen_parameters_stay_out_of_the_optimizer():
    model = SeedCNN(ModelConfig(), 1, (28, 28), 5)
    freeze(model.features)
    optimizer = make_optimizer(trainable_parameters(model), TrainConfig())
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not held & {id(p) for p in model.features.parameters()}
    assert held == {id(p) for p in model.classifier.parameters()}


def test_frozen_batchnorm_keeps_eval_mode():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 26 * 26, 3))
    freeze(model[:2])
    train_mode(model)
    assert not model[1].training and model[3].training
    before = model[1].running_mean.clone()
    model(torch.randn(4, 1, 28, 28))
    assert torch.equal(model[1].running_mean, before)

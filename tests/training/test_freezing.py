import torch
from torch import nn

from transferkit.config import ModelConfig, TrainConfig
from transferkit.models import SeedCNN
from transferkit.training import freeze, make_optimizer, train_mode, trainable_parameters, unfreeze


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


def test_unfrozen_batchnorm_trains_its_scale_but_keeps_its_statistics():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Dropout(0.5), nn.Flatten(), nn.Linear(1352, 3))
    freeze(model[:3], eval_mode=True)
    unfreeze(model[:3])
    train_mode(model)
    assert not model[1].training and model[2].training  # statistics kept, dropout acts again
    before = model[1].running_mean.clone()
    model(torch.randn(4, 1, 28, 28)).sum().backward()
    assert torch.equal(model[1].running_mean, before)
    assert model[1].weight.grad is not None and model[0].weight.grad is not None

    unfreeze(model[:3], reestimate_batchnorm=True)
    train_mode(model)
    model(torch.randn(4, 1, 28, 28))
    assert model[1].training and not torch.equal(model[1].running_mean, before)

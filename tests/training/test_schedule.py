import math

import torch
from torch import nn

from transferkit.training import FitPlan, TensorBatches, fit
from transferkit.training.loop import set_cosine_lr


def test_cosine_rate_falls_from_each_groups_rate_to_zero():
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 1e-4}])
    set_cosine_lr(optimizer, 0, 10)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 1e-4]
    set_cosine_lr(optimizer, 5, 10)
    assert [g["lr"] for g in optimizer.param_groups] == [5e-4, 5e-5]
    set_cosine_lr(optimizer, 10, 10)
    assert [g["lr"] for g in optimizer.param_groups] == [0.0, 0.0]
    # The start rate travels in the optimizer's state dict, so a resumed fit continues on the same curve.
    resumed = torch.optim.Adam([{"params": [a], "lr": 1.0}, {"params": [b], "lr": 1.0}])
    resumed.load_state_dict(optimizer.state_dict())
    set_cosine_lr(resumed, 5, 10)
    assert [g["lr"] for g in resumed.param_groups] == [5e-4, 5e-5]


def test_fit_with_the_cosine_schedule_ends_near_zero_and_trains():
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long()
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    history = fit(model, optimizer, TensorBatches(x, y, 16, seed=0), x, y, FitPlan(epochs=3, lr_schedule="cosine"))
    steps = 3 * 4
    assert optimizer.param_groups[0]["lr"] == 0.5 * 0.5 * (1 + math.cos(math.pi * (steps - 1) / steps))
    assert history[-1].val_accuracy > 0.9


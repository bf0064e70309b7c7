import math

import torch
from torch import nn

from transferkit.training import TensorBatches, fit
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
    history = fit(model, optimizer, TensorBatches(x, y, 16, seed=0), x, y, epochs=3, lr_schedule="cosine")
    steps = 3 * 4
    assert optimizer.param_groups[0]["lr"] == 0.5 * 0.5 * (1 + math.cos(math.pi * (steps - 1) / steps))
    assert history[-1].val_accuracy > 0.9


def test_fp16_loss_scale_travels_in_the_checkpoint():
    """GradScaler backs off from its initial 65536 where fp16 gradients overflow; a resumed fit must go on from
    the scale it had reached, not start over (the steps it would skip again would change the weights)."""
    import json

    import pytest

    from transferkit.errors import Interrupted
    from transferkit.training import FitState

    torch.manual_seed(0)
    x = torch.randn(256, 4) * 100  # large gradients: inf in fp16 at the initial scale
    y = (x[:, 0] > 0).long()
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    saved = []
    fit(model, optimizer, TensorBatches(x, y, 16, seed=0), x, y, epochs=1, autocast_dtype=torch.float16,
        on_checkpoint=lambda s: saved.append(json.loads(json.dumps(s.to_dict()))))  # as the checkpoint keeps it
    scale = saved[-1]["loss_scale"]["scale"]
    assert scale < 65536.0
    resumed = FitState.from_dict(saved[-1])
    again = []
    with pytest.raises(Interrupted):  # stopped after one step of the resumed fit's second epoch
        fit(model, optimizer, TensorBatches(x, y, 16, seed=1), x, y, epochs=2, autocast_dtype=torch.float16,
            state=resumed, on_checkpoint=lambda s: again.append(dict(s.loss_scale)), should_stop=lambda: True)
    assert again[-1]["scale"] == scale  # one step later: no overflow at the reached scale, none re-learned

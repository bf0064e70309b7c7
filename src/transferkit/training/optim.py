"""Optimizers by name, with the settings the seeds used."""

from __future__ import annotations

import torch

from ..config import TrainConfig


def make_optimizer(params: list[torch.nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """Adadelta as Keras 2 set it (rho 0.95, eps 1e-7), Adam, or plain SGD; foreach kernels for speed."""
    lr = config.learning_rate
    if config.optimizer == "adadelta":
        return torch.optim.Adadelta(params, lr=lr, rho=0.95, eps=1e-7, foreach=True)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, eps=1e-7, foreach=True)
    return torch.optim.SGD(params, lr=lr, foreach=True)

"""A linear probe: multinomial logistic regression on standardised frozen features, a fixed L-BFGS budget."""

from __future__ import annotations

from collections.abc import Callable

import torch

PROBE_ITERATIONS = 100  # L-BFGS iterations at most (it stops sooner once the gradient is below 1e-6)
PROBE_L2 = 1e-3  # on the mean cross-entropy, with features standardised on the training set


def fit_probe(train: torch.Tensor, train_y: torch.Tensor, classes: int, iterations: int = PROBE_ITERATIONS,
              l2: float = PROBE_L2) -> Callable[[torch.Tensor], torch.Tensor]:
    """Logistic regression fitted on (`train`, `train_y`), deterministic (starts at zero); returns the function
    features -> logits (`classes` columns)."""
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    x = (train.float() - mean) / std
    weight = torch.zeros(x.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=iterations, history_size=10,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-9)

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = torch.nn.functional.cross_entropy(x @ weight + bias, train_y) + l2 / 2 * (weight**2).sum()
        value.backward()
        return value

    with torch.enable_grad():
        optimizer.step(loss)

    def logits(features: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return ((features.float() - mean) / std) @ weight + bias

    return logits


def probe_accuracy(train: torch.Tensor, train_y: torch.Tensor, val: torch.Tensor, val_y: torch.Tensor,
                   iterations: int = PROBE_ITERATIONS, l2: float = PROBE_L2) -> float:
    """Validation accuracy of logistic regression fitted on (`train`, `train_y`); deterministic (starts at zero)."""
    classes = int(max(train_y.max(), val_y.max())) + 1
    logits = fit_probe(train, train_y, classes, iterations, l2)
    return float((logits(val).argmax(1) == val_y).float().mean())

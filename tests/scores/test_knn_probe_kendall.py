"""kNN accuracy, the linear probe and Kendall's tau on cases whose answer is known."""

import pytest
import torch

from transferkit.scores import kendall_tau, knn_accuracy, probe_accuracy


def clusters(n_per_class: int, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(3, 8) * 4
    y = torch.arange(3).repeat_interleave(n_per_class)
    return centres[y] + spread * torch.randn(len(y), 8, generator=g), y


def test_knn_and_probe_separate_clusters_and_not_noise():
    x, y = clusters(30, 0.5, 0)
    xv, yv = clusters(10, 0.5, 1)
    assert knn_accuracy(x, y, xv, yv) == 1.0 and probe_accuracy(x, y, xv, yv) == 1.0
    g = torch.Generator().manual_seed(2)
    noise, noise_val = torch.randn(90, 8, generator=g), torch.randn(30, 8, generator=g)
    assert knn_accuracy(noise, y, noise_val, yv) < 0.7 and probe_accuracy(noise, y, noise_val, yv) < 0.7


def test_knn_votes_by_count_and_breaks_ties_by_similarity():
    train = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.7, 0.7]])
    labels = torch.tensor([0, 0, 1, 1])
    # k=3 from [1, 0.05]: two of class 0, one of class 1 -> 0; k=2 from [0.6, 1]: one each, class 1's closer.
    assert knn_accuracy(train, labels, torch.tensor([[1.0, 0.05]]), torch.tensor([0]), k=3) == 1.0
    assert knn_accuracy(train, labels, torch.tensor([[0.6, 1.0]]), torch.tensor([1]), k=2) == 1.0


def test_kendall_tau_b():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    # 6 pairs: 4 concordant, 1 discordant, 1 tied in b only -> (4 - 1) / sqrt(6 * 5)
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 3]) == pytest.approx(3 / 30**0.5)
    assert kendall_tau([1, 1, 1], [1, 2, 3]) is None

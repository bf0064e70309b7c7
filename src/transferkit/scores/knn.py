"""k-nearest-neighbour validation accuracy on frozen features: cosine similarity, majority vote."""

from __future__ import annotations

import torch

KNN_K = 20  # chosen once, as DINO's k-NN evaluation does; fewer when there are fewer training images
CHUNK = 1024  # validation rows per similarity block: 1024 x 25,000 floats is 100 MB


@torch.no_grad()
def knn_accuracy(train: torch.Tensor, train_y: torch.Tensor, val: torch.Tensor, val_y: torch.Tensor,
                 k: int = KNN_K) -> float:
    """Share of validation images whose k most cosine-similar training images are mostly of their class (a tie
    goes to the class whose neighbours are the more similar)."""
    train = torch.nn.functional.normalize(train.float(), dim=1)
    val = torch.nn.functional.normalize(val.float(), dim=1)
    k = min(k, len(train))
    classes = int(max(train_y.max(), val_y.max())) + 1
    correct = 0
    for start in range(0, len(val), CHUNK):
        similarity, nearest = (val[start : start + CHUNK] @ train.T).topk(k, dim=1)
        votes = torch.zeros(len(nearest), classes)
        votes.scatter_add_(1, train_y[nearest], torch.ones_like(similarity))
        # Summed similarity lies in [-k, k]; scaled into (-0.5, 0.5) it only breaks ties between counts.
        closeness = torch.zeros(len(nearest), classes).scatter_add_(1, train_y[nearest], similarity)
        predicted = (votes + closeness / (2 * k + 2)).argmax(1)
        correct += int((predicted == val_y[start : start + CHUNK]).sum())
    return correct / len(val)

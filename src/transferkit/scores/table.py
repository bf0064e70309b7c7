"""Scoring one candidate's features with every score, timed; ordering candidates by their scores."""

from __future__ import annotations

import time

import numpy as np
import torch

from .knn import knn_accuracy
from .logme import logme
from .probe import probe_accuracy

SCORES = ("logme", "knn", "probe")


def score_features(train: torch.Tensor, train_y: torch.Tensor, val: torch.Tensor,
                   val_y: torch.Tensor) -> tuple[dict[str, float], dict[str, float]]:
    """Each score of frozen features, and the seconds it took: LogME on the training images (it needs no
    validation set), kNN and the probe fitted on the training images and measured on the validation images."""
    scores, seconds = {}, {}
    for name, compute in (("logme", lambda: logme(train.numpy(), train_y.numpy()).score),
                          ("knn", lambda: knn_accuracy(train, train_y, val, val_y)),
                          ("probe", lambda: probe_accuracy(train, train_y, val, val_y))):
        start = time.perf_counter()
        scores[name] = float(compute())
        seconds[name] = round(time.perf_counter() - start, 3)
    return scores, seconds


def order_by_scores(rows: list[dict]) -> list[int]:
    """Positions of `rows` (each with a `scores` dict), best first: by the mean of their ranks over the scores
    (ties averaged), then by the probe's accuracy."""
    ranks = np.zeros(len(rows))
    for score in SCORES:
        values = np.array([r["scores"][score] for r in rows])
        ranks += np.array([(values > v).sum() + ((values == v).sum() + 1) / 2 for v in values])
    return sorted(range(len(rows)), key=lambda i: (ranks[i], -rows[i]["scores"]["probe"]))

"""Scoring one candidate's features with every score, timed; ordering candidates by their scores.

A score that cannot be computed is absent (None) with its reason, never NaN: absent scores rank last."""

from __future__ import annotations

import time

import numpy as np
import torch

from .knn import knn_accuracy
from .logme import logme
from .probe import probe_accuracy

SCORES = ("logme", "knn", "probe")


def score_features(train: torch.Tensor, train_y: torch.Tensor, val: torch.Tensor,
                   val_y: torch.Tensor) -> dict:
    """Each score of frozen features and the seconds it took: LogME on the training images (it needs no
    validation set), kNN and the probe fitted on the training images and measured on the validation images.

    Returns {"scores": {name: value or None}, "seconds": {...}, "absent": {name: reason}, "logme": per-class
    detail (converged, iterations, bound)}."""
    out: dict = {"scores": {}, "seconds": {}, "absent": {}, "logme": None}
    if not (bool(torch.isfinite(train).all()) and bool(torch.isfinite(val).all())):
        reason = ("the features hold NaN or Infinity (the backbone overflowed at this precision: "
                  "try --precision fp32)")
        out["scores"] = dict.fromkeys(SCORES)
        out["seconds"] = dict.fromkeys(SCORES, 0.0)
        out["absent"] = dict.fromkeys(SCORES, reason)
        return out

    def compute_logme() -> float:
        result = logme(train.numpy(), train_y.numpy())
        out["logme"] = {"converged": result.converged, "iterations": result.iterations, "bound": result.bound,
                        "classes_at_bound": result.classes_at_bound}
        return result.score

    for name, compute in (("logme", compute_logme),
                          ("knn", lambda: knn_accuracy(train, train_y, val, val_y)),
                          ("probe", lambda: probe_accuracy(train, train_y, val, val_y))):
        start = time.perf_counter()
        value = float(compute())
        out["seconds"][name] = round(time.perf_counter() - start, 3)
        if np.isfinite(value):
            out["scores"][name] = value
        else:  # a bug in a score, caught here rather than written or ranked
            out["scores"][name] = None
            out["absent"][name] = f"{name} came out {value} on these features"
    return out


def order_by_scores(rows: list[dict]) -> list[int]:
    """Positions of `rows` (each with a `scores` dict), best first: by the mean of their ranks over the scores
    (ties averaged; an absent score ranks last), then by the probe's accuracy."""
    ranks = np.zeros(len(rows))
    for score in SCORES:
        values = [r["scores"].get(score) for r in rows]
        present = np.array([v for v in values if v is not None])
        ranks += np.array([len(rows) if v is None else (present > v).sum() + ((present == v).sum() + 1) / 2
                           for v in values])
    probe = [r["scores"].get("probe") for r in rows]
    return sorted(range(len(rows)), key=lambda i: (ranks[i], -(probe[i] if probe[i] is not None else -1.0)))

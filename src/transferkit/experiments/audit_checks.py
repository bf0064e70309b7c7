"""The checks of `transferkit audit` on arrays: nearest neighbours in feature space (blocked, never an N x N matrix),
exact and near duplicates, outliers, and likely label errors from out-of-fold probe probabilities ranked by
confident learning (cleanlab)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from ..errors import UserError
from ..scores.probe import fit_probe

NEIGHBOURS = 10  # per image: the near-duplicate candidates, the outlier score, the report's neighbours
BLOCK = 512  # rows of the similarity matrix at a time: 512 x 50,000 float32 is 100 MB
OUTLIER_FENCE = 3.0  # Tukey's far-out fence: an outlier's score is above Q3 + 3 IQR of all images' scores


def nearest_neighbours(features: torch.Tensor, k: int = NEIGHBOURS) -> tuple[np.ndarray, np.ndarray]:
    """Each image's `k` most cosine-similar other images: (indices N x k, similarities N x k), best first."""
    f = torch.nn.functional.normalize(features.float(), dim=1)
    n, k = len(f), min(k, len(f) - 1)
    indices, similarities = np.empty((n, k), np.int64), np.empty((n, k), np.float32)
    with torch.no_grad():
        for start in range(0, n, BLOCK):
            s = f[start:start + BLOCK] @ f.T
            rows = torch.arange(len(s))
            s[rows, rows + start] = -2.0  # not itself
            top = s.topk(k, dim=1)
            indices[start:start + len(s)] = top.indices.numpy()
            similarities[start:start + len(s)] = top.values.numpy()
    return indices, np.clip(similarities, -1.0, 1.0)


def exact_duplicates(hashes: list[str]) -> list[list[int]]:
    """Groups (two or more) of images whose decoded pixels are the same, in file order."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, h in enumerate(hashes):
        groups[h].append(i)
    return [g for g in groups.values() if len(g) > 1]


def near_duplicates(indices: np.ndarray, similarities: np.ndarray, thumbs: np.ndarray, hashes: list[str],
                    threshold: float, pixel_threshold: float) -> list[tuple[int, int, float, float]]:
    """Pairs (i < j, feature similarity, pixel correlation) among the neighbours whose features' cosine similarity
    is at least `threshold` and whose thumbnails' correlation confirms it (at least `pixel_threshold`); pairs with
    the same pixels are exact duplicates, not listed here."""
    pairs = {}
    for i, j in zip(*np.nonzero(similarities >= threshold), strict=True):
        a, b = sorted((int(i), int(indices[i, j])))
        if (a, b) in pairs or hashes[a] == hashes[b]:
            continue
        pixel = float(thumbs[a] @ thumbs[b] / len(thumbs[a]))
        if pixel >= pixel_threshold:
            pairs[(a, b)] = (a, b, float(similarities[i, j]), pixel)
    return sorted(pairs.values(), key=lambda p: -p[2])


def outlier_scores(similarities: np.ndarray) -> tuple[np.ndarray, float]:
    """Each image's mean cosine distance to its nearest neighbours (far from every class: high), and the fence
    above which an image is an outlier (Q3 + OUTLIER_FENCE x IQR of all images' scores)."""
    scores = 1.0 - similarities.mean(1)
    q1, q3 = np.percentile(scores, [25, 75])
    return scores, float(q3 + OUTLIER_FENCE * (q3 - q1))


def out_of_fold_probabilities(features: torch.Tensor, labels: np.ndarray, classes: int, folds: int,
                              seed: int) -> np.ndarray:
    """Predicted class probabilities of every image by a linear probe (scores/probe.py) fitted on the other
    folds only: stratified k-fold, so each class is in every probe's training set."""
    from sklearn.model_selection import StratifiedKFold  # scikit-learn comes with cleanlab (the audit extra)

    probabilities = np.zeros((len(labels), classes), np.float64)
    y = torch.from_numpy(labels).long()
    for train, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels):
        logits = fit_probe(features[train], y[train], classes)
        probabilities[held] = torch.softmax(logits(features[held]).double(), 1).numpy()
    return probabilities


def label_issues(labels: np.ndarray, probabilities: np.ndarray) -> list[tuple[int, int, float]]:
    """(image, suggested label, label quality) of the images confident learning finds likely mislabelled, most
    likely first: cleanlab's find_label_issues (prune by noise rate) ranked by self-confidence."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    quality = get_label_quality_scores(labels, probabilities)
    # n_jobs=1: cleanlab would fork a process pool, which after torch's threads have started may hang.
    found = find_label_issues(labels, probabilities, return_indices_ranked_by="self_confidence", n_jobs=1)
    return [(int(i), int(probabilities[i].argmax()), float(quality[i])) for i in found]


def fold_count(labels: np.ndarray, classes: tuple[str, ...], folds: int, origin: str) -> int:
    """`folds`, fewer when the smallest class has fewer images; a class of one image cannot be checked."""
    counts = np.bincount(labels, minlength=len(classes))
    few = [f"{c} ({n})" for c, n in zip(classes, counts, strict=True) if n < 2]
    if few:
        raise UserError(f"{origin}: class(es) {', '.join(few)} have fewer than 2 readable images, too few for the "
                        "out-of-fold probes; add images or remove the class folder")
    return int(min(folds, counts.min()))

"""What a classifier's predictions are worth beyond accuracy: per-class precision, recall and F1, balanced
accuracy, and how far its probabilities are from the frequencies they claim (calibration).

Accuracy is carried by the large classes of an imbalanced set; balanced accuracy (the mean recall over classes)
and macro-F1 weigh every class alike. Calibration follows Guo, Pleiss, Sun and Weinberger, "On Calibration of
Modern Neural Networks" (ICML 2017): the expected calibration error over 15 equal-width confidence bins, and
temperature scaling, one parameter T fitted on held-out data by minimising the negative log-likelihood of
softmax(logits / T), which changes the probabilities and never the predicted class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..config import TEMPERATURE_RANGE

ECE_BINS = 15
# The imbalance rule, one for the class weights (on the training images) and the report's headline (on the
# images the metric is measured on): the largest class has more than twice the images of the smallest.
IMBALANCE_RATIO = 2.0
# A temperature is one parameter, but the ECE that judges it needs images in its bins; below this many held-out
# images the fit and its before/after figures would be noise.
MIN_CALIBRATION_IMAGES = 50


def imbalanced(counts: np.ndarray | list[int]) -> bool:
    """True when the largest class has more than IMBALANCE_RATIO times the images of the smallest."""
    counts = np.asarray(counts)
    return len(counts) > 1 and counts.max() > IMBALANCE_RATIO * counts.min()


def class_metrics(confusion: np.ndarray | list[list[int]]) -> dict:
    """Per-class precision, recall, F1 and support, macro-F1 and balanced accuracy from a confusion matrix
    (true class rows, predicted columns). A class never predicted has precision 0 (scikit-learn's zero_division=0);
    a class with no images is left out of the macro means."""
    m = np.asarray(confusion, dtype=np.float64)
    tp, support, predicted = np.diag(m), m.sum(1), m.sum(0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(tp), where=both > 0)
    present = support > 0
    return {
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "imbalanced": bool(imbalanced(support[present])),
        "per_class": {"precision": precision.round(6).tolist(), "recall": recall.round(6).tolist(),
                      "f1": f1.round(6).tolist(), "support": support.astype(int).tolist()},
    }


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Per equal-width confidence bin: images, mean confidence and accuracy; and the expected calibration error,
    the bins' |accuracy - confidence| weighted by their share of the images."""
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == labels
    # Bin i holds confidences in (i/bins, (i+1)/bins]; a confidence of exactly 0 cannot occur for a softmax.
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    conf_sum = np.bincount(which, weights=confidence, minlength=bins)
    correct_sum = np.bincount(which, weights=correct.astype(np.float64), minlength=bins)
    filled = counts > 0
    mean_conf = np.divide(conf_sum, counts, out=np.zeros(bins), where=filled)
    accuracy = np.divide(correct_sum, counts, out=np.zeros(bins), where=filled)
    ece = float(np.sum(counts * np.abs(accuracy - mean_conf)) / max(len(labels), 1))
    return {"ece": ece, "counts": counts.tolist(), "confidence": mean_conf.round(6).tolist(),
            "accuracy": accuracy.round(6).tolist()}


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 minimising the mean negative log-likelihood of softmax(logits / T) on (logits, labels).

    The NLL is convex in 1/T, so L-BFGS (as Guo et al.'s reference code uses) finds the one minimum; here on
    log T, which keeps T positive, and in float64, so the same logits give the same T on every machine to
    rounding. The result is clipped to TEMPERATURE_RANGE."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, tolerance_grad=1e-10, tolerance_change=1e-12,
                                  line_search_fn="strong_wolfe")

    def nll() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(nll)
    t = float(log_t.detach().exp())
    low, high = TEMPERATURE_RANGE
    return min(max(t, low), high) if math.isfinite(t) else low


@dataclass(frozen=True)
class Calibration:
    """A temperature fitted on held-out images, with the calibration error before and after it."""

    temperature: float
    images: int
    split: str  # where the held-out images came from, as people name it ("validation")
    before: dict  # reliability(...) at T = 1
    after: dict  # reliability(...) at the fitted T
    note: str | None = None  # why the temperature is 1, when the images gave no optimum

    def to_dict(self) -> dict:
        return {"temperature": round(self.temperature, 6), "images": self.images, "split": self.split,
                "bins": ECE_BINS, "ece_before": round(self.before["ece"], 6), "ece_after": round(self.after["ece"], 6),
                "reliability_before": self.before, "reliability_after": self.after,
                **({"note": self.note} if self.note else {})}

    def describe(self) -> str:
        return (f"calibration on {self.images} {self.split} images: temperature {self.temperature:.3f}, "
                f"ECE {self.before['ece']:.4f} -> {self.after['ece']:.4f} on the images it was fitted on"
                + (f" ({self.note})" if self.note else ""))


def calibrate(logits: np.ndarray, labels: np.ndarray, split: str = "validation") -> Calibration:
    """Fit a temperature on (logits, labels) and measure the expected calibration error before and after."""
    if (np.asarray(logits).argmax(1) == labels).all():
        # Every image right: the likelihood rises as T falls toward 0 and has no optimum; a fitted T would only
        # claim certainty about everything, which these images cannot show.
        t, note = 1.0, ("not calibrated, the temperature kept at 1: every image is classified right, so the "
                        "likelihood has no optimum")
    else:
        t, note = fit_temperature(logits, labels), None
    return Calibration(t, len(labels), split, reliability(softmax(logits), labels),
                       reliability(softmax(logits, t), labels), note)

"""Transferability scores computed on a frozen backbone's features: LogME, k-nearest-neighbour accuracy, a linear
probe's accuracy, and the Kendall tau that checks a score's order against trained accuracies."""

from .kendall import kendall_tau
from .knn import KNN_K, knn_accuracy
from .logme import LogME, logme
from .probe import PROBE_ITERATIONS, PROBE_L2, probe_accuracy
from .table import SCORES, order_by_scores, score_features

__all__ = ["KNN_K", "LogME", "PROBE_ITERATIONS", "PROBE_L2", "SCORES", "kendall_tau", "knn_accuracy", "logme",
           "order_by_scores", "probe_accuracy", "score_features"]

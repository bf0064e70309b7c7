"""Inference: a saved model as a Classifier (a run folder in PyTorch on the fast path, or through ONNX Runtime;
a file written by `transferkit export`), and `predict` over image files. deploy/ writes and checks exported
files on top of this package."""

from .classifier import Classifier
from .predict import Prediction, load_classifier, predict

__all__ = ["Classifier", "Prediction", "load_classifier", "predict"]

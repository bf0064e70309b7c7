"""Experiments: the split-class transfer experiment, fine-tuning a backbone, and prediction."""

from .finetune import FinetuneConfig, FinetuneResult, finetune
from .predict import Prediction, predict
from .split import PHASES, SplitResult, make_split_config, run_split

__all__ = ["FinetuneConfig", "FinetuneResult", "PHASES", "Prediction", "SplitResult", "finetune",
           "make_split_config", "predict", "run_split"]

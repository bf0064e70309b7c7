"""Experiments: each reads as configuration -> data -> its phases -> results. The split-class transfer
experiment, fine-tuning a backbone, studies of many split trainings, and prediction; run_folder, runtime and
phase are what they share."""

from ..config import FinetuneConfig
from .finetune import FinetuneResult, finetune
from .predict import Prediction, predict
from .split import PHASES, SplitResult, make_split_config, run_split
from .study import StudyResult, study

__all__ = ["FinetuneConfig", "FinetuneResult", "PHASES", "Prediction", "SplitResult", "finetune",
           "make_split_config", "predict", "run_split", "StudyResult", "study"]

"""Experiments: each reads as configuration -> data -> its phases -> results. The split-class transfer
experiment, fine-tuning a backbone, ranking backbones, studies of many split trainings (prediction is inference/);
run_folder, runtime and phase are what they share."""

from ..config import FinetuneConfig
from .audit import AuditResult, audit
from .finetune import FinetuneResult, finetune
from .rank import RankResult, rank
from .split import PHASES, SplitResult, make_split_config, run_split
from .study import StudyResult, study

__all__ = ["AuditResult", "FinetuneConfig", "FinetuneResult", "PHASES", "RankResult", "SplitResult", "StudyResult",
           "audit", "finetune", "make_split_config", "rank", "run_split", "study"]

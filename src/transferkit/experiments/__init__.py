"""Experiments: the split-class transfer experiment."""

from .split import PHASES, SplitResult, make_split_config, run_split

__all__ = ["PHASES", "SplitResult", "make_split_config", "run_split"]

"""transferkit: fast, measurable, reproducible transfer learning for image classification."""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

from .errors import UserError  # noqa: E402

# The library's verbs, imported on first use: torch takes seconds to load, and `transferkit --help` needs none
# of it (PEP 562 module __getattr__; `from transferkit import run_split` works as usual).
_LAZY = {"AuditResult": "experiments", "FinetuneResult": "experiments", "RankResult": "experiments", "SplitResult": "experiments",
         "StudyResult": "experiments", "finetune": "experiments", "predict": "inference", "rank": "experiments",
         "run_split": "experiments", "study": "experiments", "audit": "experiments", "load_model": "reporting", "export": "deploy"}

__all__ = ["AuditResult", "FinetuneResult", "RankResult", "SplitResult", "StudyResult", "UserError", "__version__", "audit", "export",
           "finetune", "load_model", "predict", "rank", "run_split", "study"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

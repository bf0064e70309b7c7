"""Reporting: results.json and history.csv, weights, figures, console output."""

from .artifacts import load_model, save_model
from .environment import describe_environment
from .results import PhaseResult, read_results, write_results, write_text_atomic
from .status import STATUS_FILE, read_status, write_status

__all__ = ["STATUS_FILE", "read_status", "write_status", "PhaseResult", "describe_environment", "load_model", "read_results", "save_model", "write_results",
           "write_text_atomic"]

"""The interface every experiment tracker answers (tracking_tensorboard.py, tracking_mlflow.py); tracking.py
decides what a run tells them."""

from __future__ import annotations

import time
from pathlib import Path


class Tracker:
    """What every backend answers; each method logs and returns nothing. `state()` is what results.json keeps
    so that a resumed run continues the same tracker run."""

    name = "tracker"

    def state(self) -> dict:
        return {}

    def params(self, params: dict[str, str]) -> None: ...
    def epoch(self, phase: str, step: int, values: dict[str, float]) -> None: ...
    def finals(self, phase: str, step: int, values: dict[str, float]) -> None: ...
    def child(self, name: str, values: dict[str, float]) -> None: ...
    def finish(self, run_dir: Path, figures: list[Path]) -> None: ...
    def close(self) -> None: ...


def now_ms() -> int:
    """The time as MLflow stamps a metric: milliseconds since the epoch."""
    return int(time.time() * 1000)

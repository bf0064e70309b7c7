"""A study's record, kept by the one process that writes study.json, whichever executor (executors.py) trained
the points."""

from __future__ import annotations

import time

from rich.console import Console

from .run_folder import RunFolder


class StudyRecorder:
    """The study's record: every training as it is reported (by this process, a worker process or a Ray task),
    written atomically, so a killed study resumes from there; and a line a training with the points done of the
    total and the time left."""

    def __init__(self, run: RunFolder, console: Console, total: int):
        self.run, self.console, self.total = run, console, total
        self.done = self.trained_here = 0
        self.start = time.perf_counter()

    def record(self, name: str, phase: dict, point: dict | None, steps: list[int], finished_before: bool) -> None:
        results = self.run.results
        results["phases"][name] = phase
        results["distributed"].setdefault("steps_per_rank", {})[name] = steps
        if point is not None:
            results["points"][name] = point
        self.run.save_results()  # atomically: a killed study resumes from the points written here
        self.done += 1
        self.trained_here += not finished_before
        left = self.total - self.done
        # The wall clock per training trained in this start, so processes side by side count as they run.
        rate = (time.perf_counter() - self.start) / max(self.trained_here, 1)
        eta = f", about {minutes(left * rate)} left" if self.trained_here and left else ""
        how = "finished before" if finished_before else f"{phase['train_seconds']:.1f} s"
        self.console.print(f"[{self.done}/{self.total}] {name}: test accuracy {phase['test_accuracy']:.4f} "
                           f"({how}){eta}")

    def stopped(self, under_way: str) -> str:
        """The Interrupted line: what is recorded, and what became of the points under way."""
        return f"stopped with {self.done} of {self.total} trainings recorded; {under_way}"


def minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"

"""Experiment tracking: what a run tells TensorBoard or MLflow (`--track tensorboard[=DIR]`, `--track
mlflow[=URI]`), behind one interface with one small class per backend (tracking_tensorboard.py,
tracking_mlflow.py), each a tracker.Tracker.

A run tells its trackers its configuration once, each epoch's figures as history.csv has them (plus the
learning rate and images per second), each phase's final metrics, and, when it completes, its figures and
(MLflow) its files. A tracker that fails warns once and is dropped: tracking never fails a training.
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError, first_line
from .results import dotted, held_out_key
from .tracker import Tracker

TRACKERS = {"tensorboard": "DIR", "mlflow": "URI"}  # each backend and what its `=...` names
TRACKING_KEY = "tracking"  # results.json: where each tracker writes and, for MLflow, its run's id
# What each epoch logs: history.csv's figures, the learning rate and the images per second.
EPOCH_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "seconds", "lr", "images_per_s")


@dataclass(frozen=True)
class TrackSpec:
    """One `--track` value: the backend and where it writes (None: its default)."""

    backend: str
    where: str | None = None

    @classmethod
    def parse(cls, value: str) -> TrackSpec:
        """`tensorboard`, `tensorboard=DIR`, `mlflow` or `mlflow=URI`, refused in one line otherwise; a missing
        package is named with the pip command that installs it."""
        backend, _, where = str(value).partition("=")
        if backend not in TRACKERS:
            raise UserError(f"--track {value}: unknown tracker; give tensorboard[=DIR] or mlflow[=URI]")
        if "=" in str(value) and not where:
            raise UserError(f"--track {value}: empty {TRACKERS[backend]}; give {backend}={TRACKERS[backend]} or {backend}")
        if importlib.util.find_spec(backend) is None:
            raise UserError(f"--track {backend}: the {backend} package is not installed; "
                            f'pip install "transferkit[{backend}]"')
        return cls(backend, where or None)


def parse_track(values: str | list | tuple | None) -> tuple[TrackSpec, ...]:
    """The `track` option (one value or several, as --track repeats) as specs, one per backend (the last wins)."""
    if values is None:
        return ()
    specs = {s.backend: s for s in map(TrackSpec.parse, [values] if isinstance(values, str) else values)}
    return tuple(specs.values())


class Tracking:
    """The run's trackers (none on the other ranks of torchrun, or without --track). Each call goes to every
    tracker; one that raises is warned about once and dropped, and the run goes on."""

    def __init__(self, trackers: list[Tracker] | None = None, logged: set[str] | None = None):
        self.trackers = list(trackers or [])
        self.logged = set(logged or ())  # phases whose final metrics an earlier start logged

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def _each(self, method: str, *args: object) -> None:
        for tracker in list(self.trackers):
            try:
                getattr(tracker, method)(*args)
            except Exception as e:  # disk full, server down, a library's bug: the training matters more
                self.trackers.remove(tracker)
                warnings.warn(f"--track {tracker.name}: {first_line(e)[:200]}; tracking stopped, training goes on",
                              stacklevel=3)
                try:
                    tracker.close()
                except Exception:  # noqa: S110 - already warned about, nothing more to say
                    pass

    def state(self) -> dict:
        return {t.name: t.state() for t in self.trackers}

    def params(self, config: dict) -> None:
        self._each("params", flat_params(config))

    def epoch(self, phase: str, step: int, values: dict[str, float]) -> None:
        self._each("epoch", phase, step, finite(values))

    def phase_done(self, phase: str, record: dict) -> None:
        """A phase's final metrics, at the step of its last epoch; once (a resumed run records again the phases
        that finished before)."""
        if phase in self.logged:
            return
        self.logged.add(phase)
        self._each("finals", phase, len(record.get("history", [])), final_metrics(record))

    def finish(self, run_dir: Path, results: dict) -> None:
        """The run is complete: a study's points and a rank's candidates as child runs, the figures, the
        files; then the trackers close."""
        for name, values in children(results):
            self._each("child", name, values)
        self._each("finish", Path(run_dir), sorted(Path(run_dir).glob("*.png")))
        self.close()

    def close(self) -> None:
        self._each("close")
        self.trackers = []

    def listener(self, phase: str, inner, optimizer, world_size: int = 1):
        """`inner` (a ProgressListener), with each finished epoch told to the trackers too."""
        return TrackedProgress(self, phase, inner, optimizer, world_size) if self else inner


class TrackedProgress:
    """A ProgressListener that passes everything to `inner` and each finished epoch to the trackers: history.csv's
    figures, the rate of the epoch's last step (the last parameter group's: the head's) and images per second
    (the training images over the epoch's seconds, validation included, as history.csv counts them)."""

    def __init__(self, tracking: Tracking, phase: str, inner, optimizer, world_size: int):
        self.tracking, self.phase, self.inner, self.optimizer = tracking, phase, inner, optimizer
        self.world_size, self.images = world_size, 0

    def epoch_started(self, epoch: int, epochs: int, steps: int) -> None:
        self.images = 0
        self.inner.epoch_started(epoch, epochs, steps)

    def step_done(self, step: int, loss: float, accuracy: float, images: int = 0) -> None:
        self.images = images  # this rank's images so far in the epoch
        self.inner.step_done(step, loss, accuracy, images)

    def epoch_done(self, record, epochs: int) -> None:
        self.inner.epoch_done(record, epochs)
        values = {k: getattr(record, k) for k in EPOCH_KEYS[:5]}
        values["lr"] = float(self.optimizer.param_groups[-1]["lr"])
        values["images_per_s"] = self.images * self.world_size / record.seconds if record.seconds > 0 else math.nan
        self.tracking.epoch(self.phase, record.epoch, values)


def open_tracking(specs: tuple[TrackSpec, ...], run_dir: Path, results: dict, resumed: bool) -> Tracking:
    """The trackers `specs` ask for, and those a resumed run was tracked by (results.json's `tracking`),
    each continuing its run of before; their state is put in `results`. The configuration is logged once,
    when a tracker run is new."""
    recorded = results.get(TRACKING_KEY, {})
    wanted = {name: TrackSpec(name) for name in recorded if name in TRACKERS} | {s.backend: s for s in specs}
    tracking = Tracking(logged=set(results.get("phases", {})) if resumed else set())
    for name, spec in wanted.items():
        try:
            tracker = _backend(name)(spec.where, run_dir, recorded.get(name), resumed)
        except Exception as e:  # as any tracker failure: warned about, training goes on
            warnings.warn(f"--track {name}: {first_line(e)[:200]}; not tracked, training goes on", stacklevel=2)
            continue
        one = Tracking([tracker])
        if name not in recorded:
            one.params(results.get("config", {}))
        tracking.trackers += one.trackers
    if tracking:
        results[TRACKING_KEY] = {**recorded, **tracking.state()}
    return tracking


def _backend(name: str):
    if name == "tensorboard":
        from .tracking_tensorboard import TensorBoardTracker

        return TensorBoardTracker
    from .tracking_mlflow import MlflowTracker

    return MlflowTracker


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """Every option of the configuration, nested keys dotted, each value as text (None as 'None')."""
    return {key: ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
            for key, value in dotted(config, prefix)}


def finite(values: dict[str, float]) -> dict[str, float]:
    """The finite numbers among `values` (a tracker is given no NaN, as no file of a run holds one)."""
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def final_metrics(record: dict) -> dict[str, float]:
    """A phase's results as results.json has them: accuracy and loss of the kept epoch, balanced accuracy,
    macro-F1, ECE before and after the temperature, its training seconds."""
    metrics, calibration = record.get("metrics", {}), record.get("calibration", {})
    return finite({"accuracy": record.get(held_out_key(record, "accuracy")), "loss": record.get(held_out_key(record, "loss")),
                   "balanced_accuracy": metrics.get("balanced_accuracy"), "macro_f1": metrics.get("macro_f1"),
                   "ece_before": calibration.get("ece_before"), "ece_after": calibration.get("ece_after"),
                   "train_seconds": record.get("train_seconds")})


def numbers(d: dict, prefix: str = "") -> dict[str, float]:
    """The finite numbers of a nested record, keys dotted (lists left out)."""
    return finite(dict(dotted(d, prefix)))


def children(results: dict) -> list[tuple[str, dict[str, float]]]:
    """A study's points and a rank's candidates, each with its numbers: one child run each."""
    if results.get("experiment") == "study":
        return [(name, numbers(point)) for name, point in results.get("points", {}).items()]
    if results.get("experiment") == "rank":
        return [(row["name"], numbers(row)) for row in results.get("candidates", [])]
    return []

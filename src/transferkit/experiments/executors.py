"""Where a study's units train: one seam. The study hands its units (study_plan.Unit) and one UnitJob to an
executor; the executor trains each unit somewhere and hands every training back to the study's recorder as it
finishes. The study process alone writes the study folder, so study.json, resume and the figures are the same
whichever executor trained the points; in a resumed study the Trainer reads what finished before again instead
of training it, and the executor trains the rest.

- InProcess: every unit in this process, one after another (--jobs 1).
- LocalProcesses (study_processes.py): worker processes on this machine (--jobs N).
- RayCluster (study_ray.py): each unit a Ray task on a Ray cluster, one machine or many (--cluster ray).
- SlurmJobs (study_slurm.py): each unit a SLURM job, through submitit (--cluster slurm).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..data import ClassSplit
from ..errors import Interrupted, UserError
from ..training import Precision
from .run_folder import RunFolder
from .runtime import Runtime
from .study_plan import StudyConfig, Unit
from .study_recorder import StudyRecorder
from .study_trainer import Trainer

CLUSTER_HELP = ("ray (RAY_ADDRESS's cluster, else `ray start`'s on this machine, else a new local one), "
                "ray://HOST:PORT (a remote head) or slurm (submitit)")


@dataclass(frozen=True)
class UnitJob:
    """What training any of the study's units needs, the same wherever it trains: pickled to each worker
    process once, put in Ray's object store once."""

    config: StudyConfig
    image_shape: tuple[int, int, int]
    a: ClassSplit | None  # the source classes (None with --backbone)
    b: ClassSplit
    results: dict  # the study's record when the units were handed over: what finished before
    precision: Precision
    eval_batch_size: int
    threads: int  # torch's threads in the process that trains a unit: a point's last digits depend on them
    device: str = "cpu"


@dataclass
class StudyWork:
    """The units to train and where their trainings go: the study's folder, runtime (its stop) and recorder."""

    units: list[Unit]
    job: UnitJob
    run: RunFolder
    runtime: Runtime
    recorder: StudyRecorder


class UnitExecutor(Protocol):
    """Trains a study's units somewhere."""

    def describe(self) -> str:
        """Where the units train, for the study's header: '2 processes x 1 thread'."""

    def train(self, work: StudyWork) -> None:
        """Train every unit of `work`, each training handed to work.recorder.record as it comes back. Raises
        Interrupted once work.runtime.should_stop() (the folder resumable), and a one-line error naming the unit
        when one fails."""


class InProcess:
    """Every unit in this process, one after another, with this process's threads."""

    def __init__(self, make_trainer: Callable[[RunFolder, Runtime, Callable[..., None]], Trainer], threads: int):
        self.make_trainer, self.threads = make_trainer, threads

    def describe(self) -> str:
        return f"1 process x {self.threads} thread{'s' if self.threads > 1 else ''}"

    def train(self, work: StudyWork) -> None:
        trainer = self.make_trainer(work.run, work.runtime, work.recorder.record)
        for unit in work.units:
            trainer.unit(unit)  # stops after a step with a checkpoint, as any run does (Interrupted)


def import_extra(module: str, option: str, what: str):
    """The cluster extra's `module` (ray, submitit), or the one line that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f'{option} needs {what}: pip install "transferkit[cluster]"') from None


def cluster_choice(value: str | None) -> str | None:
    """--cluster as given, checked: None (this machine), "ray", "ray://HOST:PORT" or "slurm"; anything else is one
    line."""
    if value is None:
        return None
    text = str(value).strip()
    if text in ("ray", "slurm") or (text.startswith("ray://") and len(text) > len("ray://")):
        return text
    raise UserError(f"--cluster {value}: unknown; give {CLUSTER_HELP}")


def stopped_without_checkpoints(recorder: StudyRecorder, under_way: str) -> Interrupted:
    """The Interrupted of units stopped on a cluster: no checkpoint, what was recorded kept."""
    stop = Interrupted(recorder.stopped(under_way))
    stop.checkpointed = False
    return stop


def resume_hint(run: RunFolder, how: str) -> str:
    """'; the finished points are saved: continue with --resume DIR and the same options' (none without a
    folder)."""
    return (f"; the finished points are saved: continue with --resume {run.path} and the same options{how}"
            if run.path is not None else "")


def process_name(pid: int | None = None) -> str:
    """A process as the console names it: pid and host."""
    return f"pid {pid or os.getpid()} on {os.uname().nodename}"

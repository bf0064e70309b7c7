"""The life of every run, written once: run, finetune, rank and study are Experiments, and run_experiment
takes any of them from its options to its result.

    start (ranks, console) -> the folder to resume, refused when the configuration differs
    -> prepare: read and check everything, write nothing (a mistake leaves no folder behind)
    -> the folder created -> recording (a crash says failed in status.json) -> header -> begin (results.json)
    -> train, inside `running` (Ctrl-C and SIGTERM stop after a step, with a checkpoint)
    -> finish (summaries, figures) -> complete -> the closing lines and the result

As Lightning's Trainer owns the loop around a LightningModule, this module owns the run folder, the status,
the precision and the interruption; an Experiment only says what its run does.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Protocol, TypeVar

from rich.console import Console

from ..config import EVAL_BATCH_SIZE, RunOptions
from ..reporting import describe_environment
from ..reporting.tracking import parse_track
from ..training import Precision, resolve_precision
from ..training.distributed import Distributed
from .run_folder import RunFolder
from .runtime import Runtime, running, start

R = TypeVar("R", covariant=True)


class Experiment(Protocol[R]):
    """One command's run. `config` has to_dict() (what a resumed folder must match); `precision` is the
    requested one (auto, fp32, ...); `folder_name` names the new folder (runs/<UTC time>-<folder_name>)."""

    config: object
    precision: str
    folder_name: str
    eval_batch_size: int

    def prepare(self, ranks: Distributed, resumed: RunFolder | None) -> None:
        """Read the data and check every option against it; write nothing."""

    def header(self, console: Console, precision: Precision) -> None:
        """The run's first lines: what trains on what."""

    def record(self, precision: Precision, ranks: Distributed) -> tuple[dict, dict]:
        """results.json's first content ("experiment" first; created and environment the spine adds), and the
        distributed description (ranks.describe(...), and any more)."""

    def train(self, run: RunFolder, runtime: Runtime, results: dict) -> None:
        """Train what the run trains, saving as it goes (a resumed run reads what finished before)."""

    def finish(self, run: RunFolder, results: dict) -> None:
        """After training, before the run is complete: summaries, figures, the last files."""

    def closing(self, console: Console, run: RunFolder, results: dict) -> R:
        """The closing lines, and the command's result."""


def run_experiment(experiment: Experiment[R], life: RunOptions) -> R:
    """Take `experiment` through a run's life (see the module's docstring) and return its result."""
    ranks, console = start(life.device, life.verbose)
    tracks = parse_track(life.track)  # a bad --track is one line before anything else happens
    run = RunFolder.resume(life.resume, experiment.config.to_dict(), ranks) if life.resume is not None else None
    experiment.prepare(ranks, run)
    precision = resolve_precision(experiment.precision, device=ranks.device)
    run = (run or RunFolder.create(ranks, experiment.folder_name, life.out, life.force, life.save)).track(tracks)
    with run.recording():  # from here on a crash says failed in status.json, never running
        experiment.header(console, precision)
        record, distributed = experiment.record(precision, ranks)
        created = {"experiment": record["experiment"], "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        results = run.begin({**created, **record, "environment": describe_environment(precision, ranks.device)},
                            distributed)
        with running(ranks, console, precision, experiment.eval_batch_size or EVAL_BATCH_SIZE) as runtime:
            experiment.train(run, runtime, results)
        experiment.finish(run, results)
        run.complete()
    return experiment.closing(console, run, results)

"""The study's units in worker processes on this machine (--jobs N): an executor (executors.py).

N spawned processes take the units in turn, a unit at a time (a shared counter), and report every training
through a queue; the study process alone records them. A hand-written queue rather than the standard library's
ProcessPoolExecutor: a worker killed there breaks the whole pool. Tried on CPython 3.11 (2026-12-04): 2 spawned
workers on units of 40 steps, one killed by SIGKILL 2 s in; both futures failed with the same BrokenProcessPool
("terminated abruptly", no cause, no pid, no exit code) and the other worker was terminated at step 18 of 40,
its work lost (the pool terminates the rest, terminate_broken). Here the others checkpoint their point and stop,
and the study's one line names the unit, the exit code and the signal (tested).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import signal
import sys
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import Interrupted, UserError, first_line
from ..reporting.console import make_console
from ..training.checkpoint import Checkpointer
from ..training.distributed import Distributed
from ..training.memory import keep_freed_memory
from .executors import StudyWork, UnitJob, resume_hint
from .run_folder import RunFolder
from .runtime import STOP_SIGNALS, Runtime
from .study_plan import Unit
from .study_trainer import Trainer

WORKER_NAME = "transferkit-study-"  # + the worker's number (--jobs)


class LocalProcesses:
    """`jobs` worker processes (spawned) of `threads` threads each."""

    def __init__(self, jobs: int, threads: int):
        self.jobs, self.threads = jobs, threads

    def describe(self) -> str:
        return f"{self.jobs} processes x {self.threads} thread{'s' if self.threads > 1 else ''}"

    def train(self, work: StudyWork) -> None:
        """A worker takes the next unit not yet taken and trains it whole (its base network, then its points),
        reporting each training through a queue; this process alone records them in study.json.

        Ctrl-C or SIGTERM here sets `stop`: each worker checkpoints its point after the current step and says
        so, then the study is interrupted as one process is. A worker that fails (or dies without a word) stops
        the others the same way, and the study fails with its one-line error. Workers stop too when this
        process is gone (killed), so none is left behind.
        """
        run, runtime, recorder, jobs = work.run, work.runtime, work.recorder, self.jobs
        context = multiprocessing.get_context("spawn")
        reports, stop, next_unit = context.Queue(), context.Event(), context.Value("i", 0)
        job = WorkerJob(work.job, work.units, run.path, run.writes)
        workers = [context.Process(target=work_on_units, name=f"{WORKER_NAME}{i}", daemon=True,
                                   args=(i, job, next_unit, stop, reports)) for i in range(jobs)]
        run.status("running", phase=f"points in {jobs} processes")
        busy, failure, unit_of = set(range(jobs)), None, {}  # unit_of: the unit each worker took last
        try:
            with stop_signals_ignored(), main_script_hidden():  # inherited: Ctrl-C reaches the whole process
                for worker in workers:                                 # group, the parent decides
                    worker.start()
            while busy:
                if runtime.should_stop():
                    stop.set()
                ended = {i for i in busy if workers[i].exitcode is not None}  # all they said is in the queue now
                for kind, i, *rest in read_all(reports, timeout=0.2):
                    if kind == "trained":
                        recorder.record(*rest)
                    elif kind == "unit":
                        unit_of[i] = rest[0]
                    else:  # "ended", or "failed" with its error
                        busy.discard(i)
                        if kind == "failed":
                            user_error, error = rest
                            failure = failure or (UserError if user_error else RuntimeError)(error)
                            stop.set()
                for i in ended & busy:  # ended without a word: killed (out of memory?) or crashed
                    failure = failure or died(i, workers[i].exitcode, unit_of.get(i), work)
                    busy.discard(i)
                    stop.set()
        except BaseException:  # a second Ctrl-C, or study.json could not be written: the workers go at once
            for worker in workers:
                if worker.pid is not None:
                    worker.kill()
            raise
        finally:
            stop.set()
            for worker in (w for w in workers if w.pid is not None):
                worker.join(timeout=60)
                if worker.is_alive():
                    worker.kill()
                    worker.join()
        if failure is not None:
            raise failure
        if runtime.should_stop():
            raise Interrupted(recorder.stopped("the points under way checkpointed"))


def died(worker: int, code: int, unit: int | None, work: StudyWork) -> UserError:
    """A worker that ended without a word, in one line: which, how, on which unit, and how to continue."""
    how = f"exit code {code}"
    if code < 0 and -code in signal.valid_signals():
        how += f" (killed by {signal.Signals(-code).name}" + (": the out-of-memory killer's signal, or kill -9)"
                                                           if -code == signal.SIGKILL else ")")
    doing = ""
    if unit is not None:
        left = [name for name in work.units[unit].trainings if not work.run.finished(name)]
        more = f" and {len(left) - 3} more" if len(left) > 3 else ""
        doing = f" while training unit {unit} ({', '.join(left[:3])}{more})" if left else f" after unit {unit}"
    return UserError(f"study process {worker} ended with {how}{doing}{resume_hint(work.run, '')}")


@contextlib.contextmanager
def main_script_hidden() -> Iterator[None]:
    """The __main__ module's file and spec hidden while workers start: spawn would have each worker run the
    user's script (or module) again before the worker's own code, and a script that calls study() without an
    `if __name__ == "__main__":` guard would start a study in every worker (and CPython's spawn can block on a
    worker that dies there, the parent holding the pipe it writes to). The workers run transferkit's code
    alone and receive only transferkit's, NumPy's and torch's objects, so nothing of __main__ is needed."""
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    hidden = {name: main.__dict__[name] for name in ("__file__", "__spec__") if name in main.__dict__}
    if "__file__" in hidden:
        del main.__file__
    if "__spec__" in hidden:
        main.__spec__ = None
    try:
        yield
    finally:
        for name, value in hidden.items():
            setattr(main, name, value)


@contextlib.contextmanager
def stop_signals_ignored() -> Iterator[None]:
    """Ctrl-C and SIGTERM ignored inside (for the processes started there, which keep it), handled again after."""
    try:
        before = {s: signal.signal(s, signal.SIG_IGN) for s in STOP_SIGNALS}
    except ValueError:  # not the main thread: signals are not this thread's to handle
        yield
        return
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def read_all(reports, timeout: float) -> list[tuple]:
    """The messages in the queue: the first waited for up to `timeout`, then all that are there."""
    messages = []
    try:
        messages.append(reports.get(timeout=timeout))
        while True:
            messages.append(reports.get_nowait())
    except queue.Empty:
        return messages


class WorkerFolder(RunFolder):
    """A worker's view of the study folder: it saves its units' networks (weights/) and checkpoints its point
    under way in the unit's own file; study.json and status.json are the parent's alone."""

    def __init__(self, path: Path | None, writes: bool, results: dict):
        super().__init__(path, writes, results)
        self.phase = "setup"  # the training under way, named if this process fails

    def for_unit(self, index: int) -> None:
        if self.path is not None:
            self.checkpoints = Checkpointer(self.path / f"checkpoint-unit={index}.safetensors")

    def status(self, status: str, **details: object) -> None:
        self.phase = str(details.get("phase", self.phase))

    def save_results(self) -> None:
        pass


@dataclass(frozen=True)
class WorkerJob:
    """What a worker process needs (pickled to it at spawn): the unit job, the units, the study's folder."""

    job: UnitJob
    units: list[Unit]
    path: Path | None  # the study's folder (None: not saved)
    writes: bool


def work_on_units(index: int, worker: WorkerJob, next_unit, stop, reports) -> None:
    """A worker process: units in turn, each trained whole, every training reported as ("trained", ...). It
    ignores Ctrl-C and SIGTERM (set so before it started): the parent passes a stop on through `stop`."""
    job, units = worker.job, worker.units
    torch.set_num_threads(job.threads)
    keep_freed_memory()
    warnings.showwarning = one_line_warning  # as the CLI shows the parent's
    parent = os.getppid()

    def should_stop() -> bool:  # asked, or orphaned (the parent was killed): stop after this step
        return stop.is_set() or os.getppid() != parent

    run = WorkerFolder(worker.path, worker.writes, job.results)
    runtime = Runtime(Distributed(), job.precision, make_console(quiet=True), should_stop, job.eval_batch_size)
    trainer = Trainer(job.config, job.image_shape, job.a, job.b, run, runtime,
                      lambda *record: reports.put(("trained", index, *record)))
    try:
        while not should_stop():
            with next_unit.get_lock():
                i, next_unit.value = next_unit.value, next_unit.value + 1
            if i >= len(units):
                break
            reports.put(("unit", index, i))  # so that the parent can name it, should this process die
            run.for_unit(i)
            trainer.unit(units[i])
            if run.checkpoints is not None and run.writes:
                run.checkpoints.path.unlink(missing_ok=True)  # the unit is recorded: nothing to continue
        reports.put(("ended", index))
    except Interrupted:
        reports.put(("ended", index))
    except BaseException as e:  # noqa: BLE001 - every failure is reported, a bug's traceback printed here
        user_error = isinstance(e, UserError)
        if not user_error:
            traceback.print_exc()
        error = first_line(e) if user_error else f"{type(e).__name__}: {first_line(e)}"
        reports.put(("failed", index, user_error, f"study process {index} ({run.phase}): {error}"))
    if os.getppid() != parent:
        reports.cancel_join_thread()  # nobody reads any more: exit without flushing


def one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)

"""Transfer studies: many small trainings of the split experiment, each a point (an arm at a shot count or a
cut, for one seed), summarised over seeds with 95% intervals.

- shots: how little target data transfer pays with: the transfer and scratch arms at every shot count
  (images per target class), the same images for both arms of a seed.
- freeze: how deep to freeze (Yosinski, Clune, Bengio and Lipson, NIPS 2014): baseB, and at every cut n
  (the first n weight layers) BnB and BnB+ (copied from baseB, frozen or fine-tuned), AnB and AnB+ (copied
  from baseA, the source network).

One source network per seed, read again on resume; the transfer arm's frozen features computed once per
source network and indexed by every shot count; every point written to study.json as it finishes.

The work is cut into units (study_units): a network the points copy from with those points (a seed's baseA and its
transfer or AnB points; its baseB and BnB points), or a point that copies nothing (scratch), longest first.
With --jobs N the units are dealt out to N worker processes, a unit at a time; the parent alone writes
study.json, as the workers report (see _train_in_processes).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from rich.console import Console
from rich.text import Text

from ..command_options import StudyOptions
from ..config import STUDY_SEEDS, RunOptions, SplitConfig
from ..data import ClassSplit, load_dataset, resolve_split, split_by_class
from ..errors import Interrupted, UserError, first_line
from ..models import SeedCNN
from ..reporting.console import make_console
from ..reporting.results import STUDY_FILE
from ..reporting.study import (
    STUDY_CSV,
    check_study,
    freeze_figure,
    shots_figure,
    summarise,
    write_study_csv,
)
from ..training import Precision
from ..training.batches import usable_cores, worker_count
from ..training.checkpoint import Checkpointer
from ..training.distributed import Distributed
from ..training.memory import keep_freed_memory
from .run_folder import RunFolder, worker_checkpoints
from .runtime import STOP_SIGNALS, Runtime
from .spine import run_experiment
from .split import make_split_config
from .study_backbone import (
    BackboneTrainer,
    prepare_backbone,
    refuse_seed_network_options,
    source_text,
)
from .study_plan import (
    Point,
    StudyConfig,
    Unit,
    backbone_stages,
)
from .study_trainer import Trainer

WORKER_NAME = "transferkit-study-"  # + the worker's number (--jobs)


@dataclass
class StudyResult:
    """What study.json carries: every point, the summary per arm and x with intervals, and the figures."""

    config: StudyConfig
    results: dict
    figures: dict[str, Figure]
    run_dir: Path | None

    @property
    def table(self) -> list[dict]:
        """One row per arm and shot count (or cut): mean test accuracy over seeds and its 95% interval."""
        return self.results["summary"]

    def summary(self) -> str:
        return " ".join(self.results["findings"])


def study(kind: str, dataset: str = SplitConfig.dataset, source: object = None, target: object = None, *,
          seeds: int | None = None, shots: object = None, cuts: object = None, arms: object = StudyOptions.arms,
          min_steps: int = StudyOptions.min_steps, jobs: int | None = StudyOptions.jobs, **options: object
          ) -> StudyResult:
    """Run a study (`kind` shots or freeze) of the split experiment on `dataset` and return its StudyResult.

    `shots`: images per target class (`"1,5,10,all"` or a list; 0 or "all" for all); `cuts`: the freeze study's
    cuts (`"1,2,3"`); `arms`: a subset of the kind's arms; `seeds`: how many (2 or more, for intervals).
    `options` as for run_split (`epochs=5`, `limit=2000`, `head="reset"`), RunOptions (`out`, `resume`, `force`,
    `save`, `verbose`, `device`, `track`) too: a study folder is a run folder, resumed point by point. `jobs`: worker
    processes training the study's units (see Unit) side by side on the CPU (default: one per usable core),
    capped at the usable cores, each with cores // jobs threads; 1 trains every point in this process.
    """
    life = RunOptions.take(options)
    seeds = STUDY_SEEDS.get(kind, 3) if seeds is None else seeds
    cuts = _numbers(cuts, "--cuts")
    if options.get("backbone") is not None:  # a backbone study (study_backbone.py): cuts are its stages
        refuse_seed_network_options(options["backbone"], options)
        if cuts is None and kind == "freeze":  # every stage, as the seed network's every weight layer
            cuts = tuple(range(1, len(backbone_stages(options["backbone"])) + 1))
    # A study's points train their epochs and min_steps (StudyConfig's), never stopped early: run's stopping is off.
    options = {**options, "min_steps": 0, "patience": 0}
    config = StudyConfig(kind, make_split_config(dataset, source, target, **options), seeds,
                         **_given(shots=_numbers(shots, "--shots", allow_all=True), cuts=cuts,
                                  arms=_names(arms)), min_steps=min_steps)
    return run_experiment(StudyExperiment(config, jobs), life)


class StudyExperiment:
    """A study on the spine (spine.py): its points trained unit by unit (see Unit), in this process or in
    `jobs` worker processes, each recorded in study.json as it finishes."""

    def __init__(self, config: StudyConfig, jobs: int | None):
        self.config, self.jobs, self.precision = config, jobs, config.split.train.precision
        self.folder_name = f"study-{config.kind}-{Path(config.split.dataset).stem or 'data'}"
        self.eval_batch_size = config.split.train.eval_batch_size

    def prepare(self, ranks: Distributed, resumed: RunFolder | None) -> None:
        config, split = self.config, self.config.split
        if ranks.world_size > 1:
            raise UserError("studies train their points one after another in one process; run without torchrun")
        self.jobs = study_jobs(self.jobs, len(study_units(config)), ranks.device, split.backbone)
        # Threads per process: a point's last digits depend on them (float sums split over threads), not on which
        # process trained it. One process keeps torch's own (every core, or OMP_NUM_THREADS).
        self.threads = torch.get_num_threads() if self.jobs == 1 else max(1, usable_cores() // self.jobs)
        if resumed is not None:  # points of the wrong shape: one line now, not a TypeError after training
            check_study(resumed.path / STUDY_FILE, resumed.results)
        self.data = data = load_dataset(split.dataset, split.data, val_fraction=split.val_fraction,
                                        seed=split.train.seed, image_size=split.image_size)
        src, tgt = resolve_split(split.source, split.target, data.class_names, source_trained=not split.backbone)
        # With --backbone the source is its pretraining (ImageNet): no source classes, no baseA.
        self.a = split_by_class(data, src, split.limit) if not split.backbone else None
        self.b = split_by_class(data, tgt, split.limit)
        self.backbone = None
        if split.backbone:  # the backbone and its weights, read now: grayscale data or weights that do not fit
            self.backbone = prepare_backbone(config, data.image_shape, len(tgt))
        _check_shots(config, self.b)
        if not split.backbone:
            SeedCNN(split.model, data.image_shape[0], data.image_shape[1:], len(src))  # sizes that do not fit fail now
        self.points = study_points(config)

    def header(self, console: Console, precision: Precision) -> None:
        config, a, b, jobs, threads = self.config, self.a, self.b, self.jobs, self.threads
        source = source_text(config.split) if a is None else ", ".join(a.class_names)
        console.print(Text.assemble(("transferkit study", "bold"), f" {config.kind} on {self.data.name}: source "
                                    f"{source} -> target {', '.join(b.class_names)}; {len(self.points)} "
                                    f"points ({', '.join(config.chosen_arms)} x {config.seeds} seeds); precision "
                                    f"{precision.name}; {jobs} process{'es' if jobs > 1 else ''} x {threads} "
                                    f"thread{'s' if threads > 1 else ''}"))

    def record(self, precision: Precision, ranks: Distributed) -> tuple[dict, dict]:
        config, split, data, a, b = self.config, self.config.split, self.data, self.a, self.b
        record = {
            "experiment": "study", "kind": config.kind,
            "dataset": {"name": data.name, "origin": data.origin, "image_shape": list(data.image_shape),
                        "source_classes": list(a.class_names) if a is not None else [],
                        "target_classes": list(b.class_names),
                        "source_train_samples": len(a.y_train) if a is not None else 0,
                        "target_train_samples": len(b.y_train),
                        "target_test_samples": len(b.y_test),
                        "target_class_sizes": np.bincount(b.y_train, minlength=len(b.class_names)).tolist()},
            "config": config.to_dict(), "phases": {}, "points": {},
        }
        if split.backbone:  # what the source is, and the stages a freeze study's cuts count
            record["dataset"]["source"] = source_text(split)
            if config.kind == "freeze":
                record["dataset"]["stages"] = list(backbone_stages(split.backbone))
        return record, {**ranks.describe(split.train.batch_size, split.train.learning_rate), "jobs": self.jobs,
                        "threads_per_job": self.threads}

    def train(self, run: RunFolder, runtime: Runtime, results: dict) -> None:
        config, a, b, shape = self.config, self.a, self.b, self.data.image_shape
        _warn_other_threads(results, self.threads)
        recorder = StudyRecorder(run, runtime.console, len(self.points) + config.seeds * _needs_base_a(config))
        if self.jobs == 1:
            trainer = (Trainer(config, shape, a, b, run, runtime, recorder.record) if self.backbone is None
                       else BackboneTrainer(config, shape, a, b, run, runtime, recorder.record, self.backbone))
            for unit in study_units(config):
                trainer.unit(unit)
        else:
            _train_in_processes(config, shape, a, b, run, runtime, recorder, self.jobs, self.threads)

    def finish(self, run: RunFolder, results: dict) -> None:
        kind = self.config.kind
        in_plan_order(results, self.config)
        results["summary"], results["findings"], results["crossover"] = summarise(results["points"], kind)
        self.figures = {"study": (shots_figure if kind == "shots" else freeze_figure)(results)}
        run.save_results()
        run.save_figures(self.figures)
        if run.writes:
            write_study_csv(run.path / STUDY_CSV, results["points"])

    def closing(self, console: Console, run: RunFolder, results: dict) -> StudyResult:
        if run.writes:
            for leftover in worker_checkpoints(run.path):  # a unit's checkpoint from a start with other --jobs
                leftover.unlink(missing_ok=True)
        for line in results["findings"]:
            console.print(line)
        if run.path is not None:
            console.print(f"study folder: {run.path}\nreport: {run.path / 'report.html'}")
        return StudyResult(self.config, results, self.figures, run.path)


class StudyRecorder:
    """The study's record, kept by the one process that writes study.json: every training as it is reported
    (by this process or a worker), written atomically, so a killed study resumes from there; and a line a
    training with the points done of the total and the time left."""

    def __init__(self, run: RunFolder, console, total: int):
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
        eta = f", about {_minutes(left * rate)} left" if self.trained_here and left else ""
        how = "finished before" if finished_before else f"{phase['train_seconds']:.1f} s"
        self.console.print(f"[{self.done}/{self.total}] {name}: test accuracy {phase['test_accuracy']:.4f} "
                           f"({how}){eta}")


def study_jobs(requested: int | None, units: int, device: torch.device, backbone: str | None = None) -> int:
    """--jobs: worker processes, capped at the usable cores (worker_count) and at the study's units (study_units: a
    process trains a unit at a time); below 1 refused. Parallel processes are for the CPU: on a GPU the points
    train in one. A backbone study trains in one process: its workers would each build the backbone and read
    the study's frozen features, which the parent computes (not measured against one process; the seed
    network's was)."""
    if requested is not None and requested < 1:
        worker_count(requested, "--jobs", least=1)  # refused, in one line
    if backbone is not None:
        if requested is not None and requested > 1:
            raise UserError(f"--jobs {requested}: a study with --backbone trains its points in one process "
                            "(drop --jobs)")
        return 1
    if device.type != "cpu":
        if requested is not None and requested > 1:
            raise UserError(f"--jobs {requested}: parallel study processes are for the CPU; on {device} a study "
                            "trains its points in one process (drop --jobs)")
        return 1
    # The default: one process per usable core (1 thread each). Measured by
    # bench/studies.py --jobs-only on a 2-core Xeon (AVX-512, AVX512-BF16, AMX; bf16) shared with two other
    # engineers' jobs: a shots study of 10 trainings (--shots 10,100 --seeds 2 --limit 4000) took 2.3x to 8.6x
    # as long as 1 process x 2 threads than as 2 processes x 1 thread, in all 4 alternated pairs (188.7 s
    # against 82.7 s at the lightest load; README, Studies). The seed network's small batches leave a second
    # thread little to share within a step, and a 2-thread process waits at each parallel region for its
    # slower thread, which other processes on the cores make much slower.
    jobs = usable_cores() if requested is None else worker_count(requested, "--jobs", 1, "processes")
    return max(1, min(jobs, units))


def _warn_other_threads(results: dict, threads: int) -> None:
    """A resumed study whose points so far trained with another thread count per process: said, not refused
    (the new points are as right, their last digits may differ from an uninterrupted study's)."""
    before = results["distributed"].get("threads_per_job")
    if before is not None and before != threads:
        warnings.warn(f"--resume: the points so far trained with {before} thread(s) per process, these with "
                      f"{threads}; their last digits may differ from an uninterrupted study's (give the first "
                      f"start's --jobs {results['distributed'].get('jobs')} on the same machine for the same)",
                      stacklevel=3)


def in_plan_order(results: dict, config: StudyConfig) -> None:
    """Phases and points in the order one process trains them, whichever process reported first: study.json
    is the same for any --jobs and any interruption."""
    order, by_seed = [], _by_seed(study_points(config))  # the plan built once: once a seed took 76 s at 1000 seeds
    for s in range(config.seeds):
        order += [Point("baseA", s).name] * _needs_base_a(config) + [p.name for p in by_seed.get(s, [])]
    rank = {name: i for i, name in enumerate(order)}
    for records in (results["phases"], results["points"], results["distributed"].get("steps_per_rank", {})):
        ordered = sorted(records.items(), key=lambda item: rank.get(item[0], len(rank)))
        records.clear()
        records.update(ordered)


# --- points in parallel processes (--jobs N) ---


def _train_in_processes(config: StudyConfig, image_shape: tuple[int, int, int], a: ClassSplit, b: ClassSplit,
                        run: RunFolder, runtime: Runtime, recorder: StudyRecorder, jobs: int, threads: int) -> None:
    """Train the study's units (study_units) in `jobs` worker processes (spawned) of `threads` threads each. A
    worker takes the next unit not yet taken and trains it whole (its base network, then its points),
    reporting each training through a queue; this process alone records them in study.json.

    Ctrl-C or SIGTERM here sets `stop`: each worker checkpoints its point after the current step and says so,
    then the study is interrupted as one process is. A worker that fails (or dies without a word) stops the
    others the same way, and the study fails with its one-line error. Workers stop too when this process is
    gone (killed), so none is left behind.
    """
    context = multiprocessing.get_context("spawn")
    reports, stop, next_unit = context.Queue(), context.Event(), context.Value("i", 0)
    job = _WorkerJob(config, image_shape, a, b, run.path, run.writes, run.results, runtime.precision,
                     runtime.eval_batch_size, threads)
    workers = [context.Process(target=_work, name=f"{WORKER_NAME}{i}", daemon=True,
                               args=(i, job, next_unit, stop, reports)) for i in range(jobs)]
    run.status("running", phase=f"points in {jobs} processes")
    busy, failure, unit_of = set(range(jobs)), None, {}  # unit_of: the unit each worker took last
    try:
        with _stop_signals_ignored(), _main_script_hidden():  # inherited: Ctrl-C reaches the whole process
            for worker in workers:                                  # group, the parent decides
                worker.start()
        while busy:
            if runtime.should_stop():
                stop.set()
            ended = {i for i in busy if workers[i].exitcode is not None}  # all they said is in the queue now
            for kind, i, *rest in _read(reports, timeout=0.2):
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
                failure = failure or _died(i, workers[i].exitcode, unit_of.get(i), config, run)
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
        raise Interrupted(f"stopped with {recorder.done} of {recorder.total} trainings recorded; the points under "
                          "way checkpointed")


def _died(worker: int, code: int, unit: int | None, config: StudyConfig, run: RunFolder) -> UserError:
    """A worker that ended without a word, in one line: which, how, on which unit, and how to continue."""
    how = f"exit code {code}"
    if code < 0 and -code in signal.valid_signals():
        how += f" (killed by {signal.Signals(-code).name}" + (": the out-of-memory killer's signal, or kill -9)"
                                                           if -code == signal.SIGKILL else ")")
    doing = ""
    if unit is not None:
        left = [name for name in _unit_trainings(study_units(config)[unit]) if not run.finished(name)]
        doing = (f" while training unit {unit} ({', '.join(left[:3])}{f' and {len(left) - 3} more' if len(left) > 3 else ''})"
                 if left else f" after unit {unit}")
    resume = (f"; the finished points are saved: continue with --resume {run.path} and the same options"
              if run.path is not None else "")
    return UserError(f"study process {worker} ended with {how}{doing}{resume}")


def _unit_trainings(unit: Unit) -> list[str]:
    """The names of a unit's trainings in order: its base network (where it trains one), then its points."""
    return [Point(unit.base, unit.seed).name] * (unit.base is not None) + [p.name for p in unit.points]


@contextlib.contextmanager
def _main_script_hidden() -> Iterator[None]:
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
def _stop_signals_ignored() -> Iterator[None]:
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


def _read(reports, timeout: float) -> list[tuple]:
    """The messages in the queue: the first waited for up to `timeout`, then all that are there."""
    messages = []
    try:
        messages.append(reports.get(timeout=timeout))
        while True:
            messages.append(reports.get_nowait())
    except queue.Empty:
        return messages


class _WorkerFolder(RunFolder):
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
class _WorkerJob:
    """What a worker process needs to train any of the study's units (pickled to it at spawn)."""

    config: StudyConfig
    image_shape: tuple[int, int, int]
    a: ClassSplit
    b: ClassSplit
    path: Path | None  # the study's folder (None: not saved)
    writes: bool
    results: dict
    precision: object
    eval_batch_size: int
    threads: int


def _work(index: int, job: _WorkerJob, next_unit, stop, reports) -> None:
    """A worker process: units in turn, each trained whole, every training reported as ("trained", ...). It
    ignores Ctrl-C and SIGTERM (set so before it started): the parent passes a stop on through `stop`."""
    config, threads = job.config, job.threads
    torch.set_num_threads(threads)
    keep_freed_memory()
    warnings.showwarning = _one_line_warning  # as the CLI shows the parent's
    parent = os.getppid()

    def should_stop() -> bool:  # asked, or orphaned (the parent was killed): stop after this step
        return stop.is_set() or os.getppid() != parent

    run = _WorkerFolder(job.path, job.writes, job.results)
    runtime = Runtime(Distributed(), job.precision, make_console(quiet=True), should_stop, job.eval_batch_size)
    trainer = Trainer(config, job.image_shape, job.a, job.b, run, runtime,
                       lambda *record: reports.put(("trained", index, *record)))
    units = study_units(config)
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


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _needs_base_a(config: StudyConfig) -> bool:
    """Whether a source network is trained per seed: an arm copies from it (none with --backbone: ImageNet)."""
    return config.split.backbone is None and any(arm in ("transfer", "AnB", "AnB+") for arm in config.chosen_arms)


def study_units(config: StudyConfig) -> list[Unit]:
    """The study's work as units (see Unit), in the order processes take them: those with a network to train
    first, then single points by shot count, all first. Longest first, so that the last unit to finish is a
    short one and no process idles long while another trains alone (the seed as the unit left the 5th of 5
    seeds to one process). Every process computes the same list."""
    by_seed, base_a = _by_seed(study_points(config)), "baseA" if _needs_base_a(config) else None
    chains, singles = [], []
    for s in range(config.seeds):
        mine = by_seed.get(s, [])
        if config.kind == "shots":  # transfer points copy the source network; scratch points copy nothing
            transfer = tuple(p for p in mine if p.arm == "transfer")
            chains += [Unit(s, base_a, transfer)] if transfer else []
            singles += [Unit(s, None, (p,)) for p in mine if p.arm == "scratch"]
            continue
        from_a = tuple(p for p in mine if p.arm in ("AnB", "AnB+"))
        chains += [Unit(s, base_a, from_a)] if from_a else []
        chains += [Unit(s, "baseB", tuple(p for p in mine if p.arm in ("BnB", "BnB+")))]  # baseB: always a point
    singles.sort(key=lambda u: (u.points[0].shots != 0, -(u.points[0].shots or 0)))
    return chains + singles


def study_points(config: StudyConfig) -> list[Point]:
    """Every point that is recorded, seed by seed in the order they train."""
    arms, points = config.chosen_arms, []
    for s in range(config.seeds):
        if config.kind == "shots":
            points += [Point(arm, s, shots=n) for n in config.shots for arm in arms]
            continue
        points += [Point("baseB", s)]  # the reference line, trained and recorded whatever the arms
        points += [Point(arm, s, cut=n) for n in config.cuts for arm in arms if arm != "baseB"]
    return points


def _by_seed(points: list[Point]) -> dict[int, list[Point]]:
    """The points of each seed, in their order."""
    out: dict[int, list[Point]] = {}
    for p in points:
        out.setdefault(p.seed, []).append(p)
    return out


def _check_shots(config: StudyConfig, b: ClassSplit) -> None:
    if config.kind != "shots":
        return
    sizes = np.bincount(b.y_train, minlength=len(b.class_names))
    smallest = int(np.argmin(sizes))
    too_many = [n for n in config.shots if n > sizes[smallest]]
    if too_many:
        raise UserError(f"--shots {max(too_many)}: class {b.class_names[smallest]!r} has only {sizes[smallest]} "
                        f"training images; give shot counts up to {sizes[smallest]} (or all)")


def _numbers(value: object, option: str, allow_all: bool = False) -> tuple[int, ...] | None:
    """`"1,5,all"` or a list -> (1, 5, 0) (0: all, where allowed)."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else [value] if isinstance(value, int) else list(value)
    out = []
    for item in items:
        text = str(item).strip().lower()
        if allow_all and text in ("all", "0"):
            out.append(0)
            continue
        try:
            number = int(text)
        except ValueError:
            raise UserError(f"{option} {value}: {item!r} is not a whole number"
                            + (" or all" if allow_all else "")) from None
        if number < 1:
            raise UserError(f"{option} {value}: {number} is not a positive number")
        out.append(number)
    return tuple(sorted(set(out), key=lambda n: (n == 0, n)))


def _names(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip())


def _given(**values: object) -> dict:
    return {k: v for k, v in values.items() if v is not None}


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"

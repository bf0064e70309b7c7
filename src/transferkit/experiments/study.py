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
An executor (executors.py) trains them: in this process (--jobs 1), in N worker processes on this machine
(--jobs N, study_processes.py), as Ray tasks on a cluster (--cluster ray, study_ray.py) or as SLURM jobs
(--cluster slurm, study_slurm.py); this process alone writes study.json, as the trainings come back.
"""

from __future__ import annotations

import warnings
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
from ..errors import UserError
from ..models import SeedCNN
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
from ..training.distributed import Distributed
from .executors import InProcess, StudyWork, UnitExecutor, UnitJob, cluster_choice, import_extra
from .run_folder import RunFolder, worker_checkpoints
from .runtime import Runtime
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
from .study_processes import LocalProcesses
from .study_ray import RayCluster, check_reachable
from .study_recorder import StudyRecorder
from .study_slurm import SlurmJobs
from .study_trainer import Trainer


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
          seeds: int | None = None, shots: object = None, cuts: object = None, **options: object) -> StudyResult:
    """Run a study (`kind` shots or freeze) of the split experiment on `dataset` and return its StudyResult.

    `shots`: images per target class (`"1,5,10,all"` or a list; 0 or "all" for all); `cuts`: the freeze study's
    cuts (`"1,2,3"`); `arms`: a subset of the kind's arms; `seeds`: how many (2 or more, for intervals).
    `options` as for run_split (`epochs=5`, `limit=2000`, `head="reset"`), RunOptions (`out`, `resume`, `force`,
    `save`, `verbose`, `device`, `track`) too: a study folder is a run folder, resumed point by point; and
    StudyOptions (command_options.py): `arms`, `min_steps` (each point's least optimizer steps), `jobs`: worker
    processes training the study's units (see Unit) side by side on the CPU (default: one per usable core),
    capped at the usable cores, each with cores // jobs threads; 1 trains every point in this process. `cluster`:
    "ray" or "ray://HOST:PORT" trains each unit as a Ray task instead, "slurm" as a SLURM job (docs/distributed.md).
    """
    life, own = RunOptions.take(options), StudyOptions.take(options)
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
                                  arms=_names(own.arms)), min_steps=own.min_steps)
    return run_experiment(StudyExperiment(config, own.jobs, cluster_choice(own.cluster)), life)


class StudyExperiment:
    """A study on the spine (spine.py): its points trained unit by unit (see Unit) by an executor (in this
    process, in `jobs` worker processes, or on `cluster`: Ray tasks or SLURM jobs), each recorded in study.json
    as it finishes."""

    def __init__(self, config: StudyConfig, jobs: int | None, cluster: str | None = None):
        self.config, self.jobs, self.cluster, self.precision = config, jobs, cluster, config.split.train.precision
        self.folder_name = f"study-{config.kind}-{Path(config.split.dataset).stem or 'data'}"
        self.eval_batch_size = config.split.train.eval_batch_size

    def prepare(self, ranks: Distributed, resumed: RunFolder | None) -> None:
        config, split = self.config, self.config.split
        if ranks.world_size > 1:
            raise UserError("studies train their points one after another in one process; run without torchrun")
        if self.cluster is not None:  # one line before anything is read: the options that do not go with it
            refuse_with_cluster(self.cluster, self.jobs, split.backbone)
            if self.cluster == "slurm":  # or how to install it
                import_extra("submitit", "--cluster slurm", "submitit")
            else:
                import_extra("ray", f"--cluster {self.cluster}", "Ray")
                check_reachable(self.cluster)  # a wrong address: one line, and no study folder
        self.jobs = study_jobs(self.jobs, len(study_units(config)), ranks.device, split.backbone)
        # Threads per process: a point's last digits depend on them (float sums split over threads), not on which
        # process trained it. One process keeps torch's own (every core, or OMP_NUM_THREADS); a unit on a cluster
        # has one, as the default --jobs workers have (one process per core).
        self.threads = (1 if self.cluster is not None else torch.get_num_threads() if self.jobs == 1
                        else max(1, usable_cores() // self.jobs))
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
        self.executor = self.choose_executor(ranks.device)

    def header(self, console: Console, precision: Precision) -> None:
        config, a, b = self.config, self.a, self.b
        source = source_text(config.split) if a is None else ", ".join(a.class_names)
        console.print(Text.assemble(("transferkit study", "bold"), f" {config.kind} on {self.data.name}: source "
                                    f"{source} -> target {', '.join(b.class_names)}; {len(self.points)} "
                                    f"points ({', '.join(config.chosen_arms)} x {config.seeds} seeds); precision "
                                    f"{precision.name}; {self.executor.describe()}"))

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
                        # What the points' test_accuracy is measured on: the data set's test split, or (a folder
                        # without test/) its val/ or held-out images; a study chooses nothing on them either way.
                        "tested_on": data.validation_split,
                        "target_class_sizes": np.bincount(b.y_train, minlength=len(b.class_names)).tolist()},
            "config": config.to_dict(), "phases": {}, "points": {},
        }
        if split.backbone:  # what the source is, and the stages a freeze study's cuts count
            record["dataset"]["source"] = source_text(split)
            if config.kind == "freeze":
                record["dataset"]["stages"] = list(backbone_stages(split.backbone))
        where = {"cluster": self.cluster.split(":")[0]} if self.cluster is not None else {}  # not the address
        return record, {**ranks.describe(split.train.batch_size, split.train.learning_rate), "jobs": self.jobs,
                        "threads_per_job": self.threads, **where}

    def choose_executor(self, device: torch.device) -> UnitExecutor:
        """Where the units train: SLURM jobs or Ray tasks (--cluster), worker processes (--jobs N) or this
        process."""
        if self.cluster == "slurm":
            return SlurmJobs(self.threads, device.type)
        if self.cluster is not None:
            return RayCluster(self.cluster, self.threads, device.type)
        if self.jobs > 1:
            return LocalProcesses(self.jobs, self.threads)
        config, shape, a, b, backbone = self.config, self.data.image_shape, self.a, self.b, self.backbone

        def trainer(run: RunFolder, runtime: Runtime, record) -> Trainer:
            return (Trainer(config, shape, a, b, run, runtime, record) if backbone is None
                    else BackboneTrainer(config, shape, a, b, run, runtime, record, backbone))

        return InProcess(trainer, self.threads)

    def train(self, run: RunFolder, runtime: Runtime, results: dict) -> None:
        config = self.config
        _warn_other_threads(results, self.threads)
        recorder = StudyRecorder(run, runtime.console, len(self.points) + config.seeds * _needs_base_a(config))
        job = UnitJob(config, self.data.image_shape, self.a, self.b, run.results, runtime.precision,
                      runtime.eval_batch_size, self.threads, runtime.device.type)
        self.executor.train(StudyWork(study_units(config), job, run, runtime, recorder))

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


def refuse_with_cluster(cluster: str, jobs: int | None, backbone: str | None) -> None:
    """--cluster with --jobs (the cluster's CPUs decide how many units train at once) or with --backbone (its
    frozen features are computed once in this process for the whole study): one line."""
    if jobs is not None:
        raise UserError(f"--jobs {jobs} with --cluster {cluster}: the cluster's CPUs decide how many units train at "
                        "once (one CPU and one thread each); drop --jobs")
    if backbone is not None:
        raise UserError(f"--cluster {cluster} with --backbone: a backbone study trains its points in one process "
                        "(drop --cluster)")


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


"""The split-class transfer experiment: train on source classes, freeze features, transfer to target classes,
and train the same network from scratch on the target classes as the control."""

from __future__ import annotations

import contextlib
import copy
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from rich.console import Console
from torch import nn

from ..config import BACKBONE_PRESET, PRESETS, ModelConfig, SplitConfig, TrainConfig
from ..data import ClassSplit, load_dataset, resolve_split, split_by_class
from ..data.preprocess import InputTransform
from ..data.splits import fewer_training_images, subsample
from ..errors import UserError
from ..models import (
    BackboneClassifier,
    Preprocessing,
    SeedCNN,
    count_params,
    keras_init,
    layer_rows,
    load_backbone_weights,
)
from ..reporting import (
    STATUS_FILE,
    PhaseResult,
    describe_environment,
    load_model,
    read_results,
    read_status,
    save_model,
    write_results,
    write_status,
)
from ..reporting.console import (
    ConsoleProgress,
    comparison_table,
    print_summary,
    transfer_verdict,
)
from ..reporting.figures import curves_figure, misclassified_figure, samples_figure, save_figures, time_figure
from ..reporting.report import write_report
from ..reporting.results import RESULTS_FILE
from ..reporting.status import recording_status
from ..training import (
    CHECKPOINT_FILE,
    FitState,
    Precision,
    TensorBatches,
    compute_features,
    fit,
    freeze,
    images_to_tensor,
    make_optimizer,
    resolve_precision,
    split_frozen,
    trainable_parameters,
)
from ..training.checkpoint import Checkpointer
from ..training.distributed import Distributed, any_rank, gather_to_main, init_distributed, on_main
from ..training.predictions import Mistakes, confusion_over_ranks, find_mistakes
from ..training.runtime import keep_freed_memory
from .feature_pass import backbone_identity, frozen_features

PHASES = ("source", "transfer", "scratch")


@dataclass
class SplitResult:
    """What results.json carries, plus the trained models and the figures."""

    config: SplitConfig
    results: dict
    phases: dict[str, PhaseResult]
    models: dict[str, nn.Module] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)
    run_dir: Path | None = None

    def summary(self) -> str:
        """One line comparing transfer with scratch."""
        return transfer_verdict(self.results["phases"]) or "phases: " + ", ".join(self.phases)


def make_split_config(dataset: str = "mnist", source: object = None, target: object = None,
                      **options: object) -> SplitConfig:
    """Build a SplitConfig from flat options (`epochs=5, filters=32, head="reset"`), as the CLI gives them.

    Options left at None take the data set's preset (config.PRESETS), then the dataclass defaults.
    """
    given = {k: v for k, v in options.items() if v is not None}
    options = {**PRESETS.get(dataset, {}), **(BACKBONE_PRESET if given.get("backbone") else {}), **given}
    groups = {cls: {f.name for f in fields(cls)} for cls in (ModelConfig, TrainConfig)}
    split_fields = {f.name for f in fields(SplitConfig)} - {"model", "train", "dataset", "source", "target"}
    chosen: dict[type, dict] = {ModelConfig: {}, TrainConfig: {}, SplitConfig: {}}
    for name, value in options.items():
        owner = next((cls for cls, names in groups.items() if name in names), None)
        if owner is None and name not in split_fields:
            raise UserError(f"unknown option {name!r}")
        chosen[owner or SplitConfig][name] = value
    return SplitConfig(dataset=dataset, source=_spec(source), target=_spec(target),
                       model=ModelConfig(**chosen[ModelConfig]), train=TrainConfig(**chosen[TrainConfig]),
                       **chosen[SplitConfig])


def _spec(classes: object) -> str | None:
    return classes if classes is None or isinstance(classes, str) else ",".join(str(c) for c in classes)


def default_run_dir(dataset: str) -> Path:
    name = Path(dataset).stem or "data"  # a data set given as a path is named by its folder or archive
    return Path("runs") / f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{name}"


def prepare_run_dir(out: Path, force: bool) -> None:
    """A new or empty folder; an existing run is pointed to --resume, anything else needs --force."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; give a folder for the run")
    if out.is_dir() and any(out.iterdir()) and not force:
        if (out / STATUS_FILE).is_file() or (out / RESULTS_FILE).is_file():
            raise UserError(f"--out {out}: holds a run already; continue it with --resume {out}, "
                            "or choose a new --out")
        raise UserError(f"--out {out}: folder exists and is not empty; choose a new folder, or --force to write into it")
    try:
        (out / "weights").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create the run folder ({e.strerror})") from None


def resumable(run_dir: Path, config: SplitConfig, world_size: int = 1) -> dict:
    """The results of the run to continue; refused when its configuration or its number of processes differs."""
    if not run_dir.is_dir():
        raise UserError(f"--resume {run_dir}: no such run folder")
    status = read_status(run_dir)
    if status is None or not (run_dir / RESULTS_FILE).is_file():
        raise UserError(f"--resume {run_dir}: not a transferkit run folder (no {STATUS_FILE} / {RESULTS_FILE})")
    if status["status"] == "complete":
        raise UserError(f"--resume {run_dir}: this run is complete already; nothing to resume")
    try:
        previous = read_results(run_dir)
    except ValueError:
        raise UserError(f"--resume {run_dir}: {RESULTS_FILE} is damaged; start a new run") from None
    differences = _differences(previous["config"], config.to_dict())
    if differences:
        raise UserError(f"--resume {run_dir}: this run was made with another configuration ({'; '.join(differences)}); "
                        "repeat its original options or start a new run")
    before = previous.get("distributed", {}).get("world_size", 1)
    if before != world_size:  # each rank's shard and its batch order depend on the world size
        raise UserError(f"--resume {run_dir}: this run was trained by {before} process(es), now {world_size}; "
                        f"resume it with as many (torchrun --nproc-per-node ... in all {before})")
    return previous


# Options added after runs were saved, and what those runs did without them: such a run resumes as it began.
BEFORE_THE_OPTION = {"lr_schedule": "constant", "train_batchnorm": True, "stream": "never"}


def _differences(saved: dict, now: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in now.items():
        old = saved.get(key, BEFORE_THE_OPTION.get(key))
        if isinstance(value, dict) and isinstance(old, dict):
            out += _differences(old, value, f"{prefix}{key}.")
        elif old != value:
            out.append(f"{prefix}{key} was {old!r}, now {value!r}")
    return out


@contextlib.contextmanager
def stop_on_interrupt() -> Iterator[Callable[[], bool]]:
    """The first Ctrl-C asks training to stop after the current step; a second one stops at once.

    Under torchrun the agent passes Ctrl-C on to every rank; the ranks agree to stop after the same step.
    """
    requested = []

    def handler(signum, frame):
        if requested:
            raise KeyboardInterrupt
        requested.append(signum)

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: leave Ctrl-C alone
        yield lambda: False
        return
    try:
        yield lambda: any_rank(bool(requested))
    finally:
        signal.signal(signal.SIGINT, previous)


def run_split(dataset: str = "mnist", source: object = None, target: object = None, *,
              out: str | Path | None = None, resume: str | Path | None = None, force: bool = False,
              save: bool = True, verbose: bool = True, device: str = "auto", **options: object) -> SplitResult:
    """Run the split experiment (source, transfer, scratch) and return its SplitResult.

    `source` / `target`: class names or indices (`"0-4"`, `range(5)`, `"dog,frog"`); by default the first and
    the second half of the classes. `options` are any field of SplitConfig, ModelConfig or TrainConfig
    (`epochs=5`, `limit=1000`, `head="reset"`). With `save`, a run folder (default runs/<UTC time>-<dataset>)
    receives results.json, history.csv, weights/, figures and a checkpoint after every epoch; `resume` continues
    such a folder from its last checkpoint with the same configuration. `device`: auto, cpu, cuda or cuda:N.
    Started by torchrun, each process trains on its shard of the data and rank 0 alone prints and writes.
    """
    config = make_split_config(dataset, source, target, **options)
    ranks = init_distributed(device)
    console = Console(quiet=not verbose or not ranks.is_main, highlight=False,
                      width=None if sys.stdout.isatty() else 120)  # logs: wide tables
    keep_freed_memory()
    previous = resumable(Path(resume), config, ranks.world_size) if resume is not None else None
    data = load_dataset(config.dataset, config.data, val_fraction=config.val_fraction, seed=config.train.seed,
                        image_size=config.image_size)
    src, tgt = resolve_split(config.source, config.target, data.class_names, source_trained=not config.backbone)
    precision = resolve_precision(config.train.precision, device=ranks.device)
    # Sizes, backbones and weights that do not fit fail here, before a run folder exists.
    backbone = _PretrainedBackbone(config, data.image_shape, len(tgt)) if config.backbone else None
    if backbone is None:
        SeedCNN(config.model, data.image_shape[0], data.image_shape[1:], len(src))
    target = fewer_training_images(split_by_class(data, tgt, config.limit), config.shots, config.train_fraction,
                                   config.train.seed)
    splits = {"target": target} if backbone else {"source": split_by_class(data, src, config.limit), "target": target}
    run_dir = None
    if resume is not None:
        run_dir = Path(resume)
    elif save:
        def create() -> Path:  # by rank 0: the default name follows its clock
            new = Path(out) if out is not None else default_run_dir(config.dataset)
            prepare_run_dir(new, force)
            write_status(new, "running", phase="setup")
            return new

        run_dir = on_main(create)
    writes = run_dir if ranks.is_main else None  # rank 0 alone writes; every rank reads (checkpoints, --resume)

    if backbone:
        source_text = (f"{config.backbone} with ImageNet weights" if config.weights == "imagenet"
                       else f"{config.backbone} with weights {config.weights}")
    else:
        source_text = f"classes {', '.join(splits['source'].class_names)}"
    console.print(f"[bold]transferkit[/] split experiment on {data.name} ({data.origin})")
    console.print(f"source {source_text} -> target classes {', '.join(target.class_names)} "
                  f"({len(target.y_train)} training images); precision {precision.name} ({precision.reason})")
    results = previous or {
        "experiment": "split",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": {"name": data.name, "origin": data.origin, "image_shape": list(data.image_shape),
                    "class_names": list(data.class_names), "train_samples": len(data.y_train),
                    "test_samples": len(data.y_test), "skipped": list(data.skipped)},
        "config": {**config.to_dict(), "learning_rate": config.train.learning_rate,
                   "source_classes": list(splits["source"].class_names) if "source" in splits else [],
                   "target_classes": list(target.class_names)},
        "source": source_text,
        "environment": describe_environment(precision, ranks.device),
        "phases": {},
        "model": "weights/transfer.safetensors",  # what `transferkit predict` uses: the target classifier
    }
    results.setdefault("distributed", ranks.describe(config.train.batch_size, config.train.learning_rate))
    result = SplitResult(config, results, {}, run_dir=run_dir)
    if writes is not None and previous is None:
        write_results(writes, results)  # the configuration, so the run can be resumed from its first epoch
    shown = {g: subsample(np.arange(len(s.y_train)), 16) for g, s in splits.items()}  # every class, not the first
    figures = {"samples": samples_figure({g: (s.x_train[shown[g]], s.y_train[shown[g]], list(s.class_names))
                                          for g, s in splits.items()})}
    if writes is not None:
        save_figures(figures, writes)  # once: each phase below saves only the figures it redraws
    runner = _PhaseRunner(config, data.image_shape, precision, console, run_dir, ranks, backbone)
    # What predict needs to feed the saved networks: resize to the data set's size, scale to [0, 1].
    preprocessing = {"kind": "scale", "channels": data.image_shape[0], "size": list(data.image_shape[1:])}
    phases = [p for p in PHASES if (p != "source" or not backbone) and (p != "scratch" or config.scratch)]
    with recording_status(writes), stop_on_interrupt() as should_stop:
        for phase in phases:
            split = splits["source" if phase == "source" else "target"]
            if phase in results["phases"]:  # finished before the run was interrupted
                model, _ = load_model(run_dir / "weights" / f"{phase}.safetensors")
                phase_result = PhaseResult.from_dict(phase, results["phases"][phase])
                console.print(f"phase {phase}: finished before, test accuracy {phase_result.test_accuracy:.4f}")
                if phase_result.misclassified is not None:  # its examples for the report, read again
                    runner.mistakes[phase] = Mistakes.from_examples(
                        phase_result.misclassified, phase_result.confusion_matrix, split.x_test.__getitem__,
                        list(split.class_names))
            else:
                if writes is not None:
                    write_status(writes, "running", phase=phase)
                model, phase_result, steps = runner.run(phase, split, result.models.get("source"), should_stop)
                results["distributed"].setdefault("steps_per_rank", {})[phase] = steps
            result.models[phase], result.phases[phase] = model, phase_result
            results["phases"][phase] = phase_result.to_dict()
            if runner.feature_pass is not None:
                results["feature_pass"] = runner.feature_pass
            redrawn = {"curves": curves_figure(results["phases"]), "training_time": time_figure(results["phases"])}
            if runner.mistakes:
                redrawn["misclassified"] = misclassified_figure({p: m.figure_group() for p, m in runner.mistakes.items()})
            figures.update(redrawn)
            if writes is not None:
                save_model(writes / "weights", phase, model, list(split.class_names),
                           backbone.preprocessing(phase).to_dict() if backbone else preprocessing)
                write_results(writes, results)
                save_figures(redrawn, writes)
                if phase != phases[-1]:  # the last one is written once the run is complete, saying so
                    write_report(writes)
    if writes is not None:
        write_status(writes, "complete")
        (writes / CHECKPOINT_FILE).unlink(missing_ok=True)  # the weights of every phase are saved
        write_report(writes)
    result.figures = figures
    console.print(comparison_table(results["phases"]))
    console.print(result.summary(), soft_wrap=True)
    if run_dir is not None:
        console.print(f"run folder: {run_dir}\nreport: {run_dir / 'report.html'}")
    return result


class _PhaseRunner:
    """Builds, freezes and trains the network for each phase, timing what the seeds time."""

    def __init__(self, config: SplitConfig, image_shape: tuple[int, int, int], precision: Precision,
                 console: Console, run_dir: Path | None, ranks: Distributed,
                 backbone: _PretrainedBackbone | None = None):
        self.config, self.image_shape, self.precision, self.console = config, image_shape, precision, console
        self.ranks, self.backbone = ranks, backbone
        self.feature_pass: dict | None = None  # the frozen backbone's pass: images, seconds, from the store
        self.mistakes: dict[str, Mistakes] = {}  # per phase trained here: for the report's confusion and examples
        self.checkpoints = Checkpointer(run_dir / CHECKPOINT_FILE) if run_dir is not None else None

    def run(self, phase: str, split: ClassSplit, source_model: nn.Module | None,
            should_stop: Callable[[], bool]) -> tuple[nn.Module, PhaseResult, list[int]]:
        """Train `phase`; returns the model, its PhaseResult and each rank's optimizer steps (on rank 0)."""
        cfg = self.config.train
        seed = cfg.seed * 1000 + PHASES.index(phase)
        # A seed per phase: each phase is reproducible on its own, whatever ran before it.
        torch.manual_seed(seed)
        k = len(split.class_names)
        inputs = None  # the pretrained backbones' resizing and normalisation, in front of the model
        if self.backbone is not None:
            model, inputs = self.backbone.model(phase)
        elif phase == "transfer":
            model = self._transfer_model(source_model, k)
        else:
            model = SeedCNN(self.config.model, self.image_shape[0], self.image_shape[1:], k)
        # uint8 for the backbones: their InputTransform scales and normalises as the weights want.
        x_train, x_test = (images_to_tensor(x, scale=inputs is None) for x in (split.x_train, split.x_test))
        # Each rank trains on its shard and validates on its share of the test images.
        x_train, y_train = self.ranks.training_shard(x_train, torch.from_numpy(split.y_train), seed)
        x_test, y_test = self.ranks.evaluation_shard(x_test, torch.from_numpy(split.y_test))
        counts = count_params(model)
        self.console.rule(f"phase {phase}: {', '.join(split.class_names)}")
        shown = (model, self.image_shape, None) if inputs is None else (
            model, (self.image_shape[0], inputs.crop, inputs.crop), 2)
        layers = layer_rows(*shown)
        print_summary(self.console, f"{phase} model", layers, counts)

        device = self.ranks.device
        model.to(device)  # before the optimizer takes its parameters
        if inputs is not None:
            inputs.to(device)
        optimizer = make_optimizer(trainable_parameters(model), cfg)
        batches = TensorBatches(x_train, y_train, cfg.batch_size, seed=seed, device=device)
        state, elapsed_before = (self.checkpoints.restore(phase, model, optimizer, batches, self.console)
                                 if self.checkpoints is not None else (None, 0.0))
        autocast_dtype = self.precision.autocast_dtype
        start = time.perf_counter()
        cache_seconds = None
        trained = model if inputs is None else nn.Sequential(inputs, model)
        if phase == "transfer" and cfg.feature_cache and self.backbone is not None:
            # The frozen backbone's features, kept on disk: a second run on the same images does no pass at all.
            (batches.x, x_test), self.feature_pass = frozen_features(
                self.config.backbone, nn.Sequential(inputs, model.features), [x_train, x_test], self.backbone.identity(self.precision),
                inputs.crop, self.console, cfg.eval_batch_size, autocast_dtype, device)
            cache_seconds = time.perf_counter() - start
            trained = model.classifier
        elif phase == "transfer" and cfg.feature_cache:
            # The frozen features do not change: compute them once (in eval mode), train the classifier on them.
            prefix, tail = split_frozen(model.features)
            batches.x = compute_features(prefix, x_train, cfg.eval_batch_size, autocast_dtype, device=device)
            x_test = compute_features(prefix, x_test, cfg.eval_batch_size, autocast_dtype, device=device)
            cache_seconds = time.perf_counter() - start
            trained = nn.Sequential(tail, model.classifier)
            self.console.print(f"cached frozen features {tuple(batches.x.shape[1:])} for {len(x_train)} + "
                               f"{len(x_test)} images in {cache_seconds:.1f}s")

        def checkpoint(fit_state: FitState) -> None:
            if self.checkpoints is not None:
                self.checkpoints.save(phase, model, optimizer, batches, fit_state,
                                      elapsed_before + time.perf_counter() - start)

        state = state if state is not None else FitState()
        history = fit(self.ranks.wrap(trained), optimizer, batches, x_test, y_test, cfg.epochs, cfg.eval_batch_size,
                      autocast_dtype, ConsoleProgress(self.console, phase), state=state, on_checkpoint=checkpoint,
                      should_stop=should_stop, lr_schedule=cfg.lr_schedule)
        seconds = elapsed_before + time.perf_counter() - start
        # On what validation ran on (cached features where there are, this rank's share of the test images),
        # so no second pass through a backbone; the confusion matrix is summed over the ranks.
        self.mistakes[phase] = find_mistakes(trained, x_test, y_test.cpu().numpy(), split.x_test.__getitem__,
                                             list(split.class_names), cfg.eval_batch_size, autocast_dtype,
                                             index_of=self.ranks.evaluation_indices)
        confusion = confusion_over_ranks(self.mistakes[phase].confusion)
        model.eval().cpu()  # trained models live on the CPU: saved, summarised, copied by the next phase
        return model, PhaseResult(
            name=phase, classes=list(split.class_names), train_samples=len(split.y_train),
            test_samples=len(split.y_test), epochs=cfg.epochs, train_seconds=seconds,
            test_loss=history[-1].val_loss, test_accuracy=history[-1].val_accuracy, params=counts,
            history=history, feature_cache_seconds=cache_seconds, layers=layers,
            confusion_matrix=confusion.tolist(), misclassified=self.mistakes[phase].examples(),
        ), gather_to_main(state.steps)

    def _transfer_model(self, source_model: nn.Module, num_classes: int) -> SeedCNN:
        model = copy.deepcopy(source_model)
        freeze(model.features)
        if self.config.head == "reset":
            model.reset_classifier(num_classes)
        elif model.num_classes != num_classes:
            # --head reuse keeps the source-trained dense layers; only an output layer of the wrong size is new.
            model.classifier.dense2 = nn.Linear(model.classifier.dense2.in_features, num_classes)
            keras_init(model.classifier.dense2)
        return model


class _PretrainedBackbone:
    """The split experiment on a pretrained backbone: the transfer phase freezes it (ImageNet weights) and
    trains a new head on its features at the weights' input size; the scratch control trains the same network
    from random weights at the data's own size (enlarging 32 px images to 224 px adds no information, and
    training a backbone at 224 px would take hours on a CPU)."""

    def __init__(self, config: SplitConfig, image_shape: tuple[int, int, int], num_classes: int):
        if image_shape[0] != 3:
            raise UserError(f"--backbone {config.backbone}: needs colour images; this data set has "
                            f"{image_shape[0]} channel(s)")
        self.config, self.image_shape, self.num_classes = config, image_shape, num_classes
        self.pretrained = BackboneClassifier(config.backbone, num_classes)
        self.weights = load_backbone_weights(self.pretrained, config.weights)  # errors now, before a run folder

    def preprocessing(self, phase: str) -> Preprocessing:
        """What the phase's network eats: the weights' size for transfer, the data's own size for scratch."""
        size = self.weights.crop if phase == "transfer" else max(self.image_shape[1:])
        return Preprocessing(resize=size, crop=size, mean=self.weights.mean, std=self.weights.std)

    def model(self, phase: str) -> tuple[BackboneClassifier, InputTransform]:
        """The phase's network (transfer: pretrained and frozen; scratch: random) and its input transform."""
        pre = self.preprocessing(phase)
        model = BackboneClassifier(self.config.backbone, self.num_classes)  # the head drawn from the phase's seed
        if phase == "transfer":
            model.features.load_state_dict(self.pretrained.features.state_dict())
            freeze(model.features, eval_mode=True)  # BatchNorm statistics stay ImageNet's
        return model, InputTransform(pre.crop, pre.mean, pre.std, resize=pre.resize)

    def identity(self, precision: Precision) -> str:
        """What determines the frozen features besides the images: network, weights, input size, precision."""
        return backbone_identity(self.config.backbone, self.pretrained.features, self.preprocessing("transfer"),
                                 precision)


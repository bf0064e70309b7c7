"""The split-class transfer experiment: train on source classes, freeze features, transfer to target classes,
and train the same network from scratch on the target classes as the control."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import torch
from matplotlib.figure import Figure
from rich.console import Console
from torch import nn

from ..config import ModelConfig, SplitConfig, TrainConfig
from ..data import ClassSplit, load_dataset, resolve_split, split_by_class
from ..errors import UserError
from ..models import SeedCNN, count_params, keras_init, layer_rows
from ..reporting import PhaseResult, describe_environment, save_model, write_results
from ..reporting.console import ConsoleProgress, comparison_table, print_summary, transfer_verdict
from ..reporting.figures import curves_figure, samples_figure, save_figures, time_figure
from ..training import (Precision, TensorBatches, compute_features, fit, freeze, images_to_tensor, make_optimizer,
                        resolve_precision, split_frozen, trainable_parameters)

PHASES = ("source", "transfer", "scratch")
PREPROCESSING = {"scale": "x / 255", "layout": "NCHW float32"}


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
        return transfer_verdict(self.results["phases"]) or "incomplete run: " + ", ".join(self.phases)


def make_split_config(dataset: str = "mnist", source: object = "0-4", target: object = "5-9",
                      **options: object) -> SplitConfig:
    """Build a SplitConfig from flat options (`epochs=5, filters=32, head="reset"`), as the CLI gives them."""
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


def _spec(classes: object) -> str:
    return classes if isinstance(classes, str) else ",".join(str(c) for c in classes)


def default_run_dir(dataset: str) -> Path:
    return Path("runs") / f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{dataset}"


def prepare_run_dir(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; give a folder for the run")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"--out {out}: folder exists and is not empty; choose a new folder or remove it")
    try:
        (out / "weights").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create the run folder ({e.strerror})") from None
    return out


def run_split(dataset: str = "mnist", source: object = "0-4", target: object = "5-9", *,
              out: str | Path | None = None, save: bool = True, verbose: bool = True,
              **options: object) -> SplitResult:
    """Run the split experiment (source, transfer, scratch) and return its SplitResult.

    `options` are any field of SplitConfig, ModelConfig or TrainConfig (`epochs=5`, `limit=1000`, `head="reset"`).
    With `save`, a run folder (default runs/<UTC time>-<dataset>) receives results.json, history.csv,
    weights/ and figures, written after each phase so a crash loses no finished phase.
    """
    config = make_split_config(dataset, source, target, **options)
    console = Console(quiet=not verbose, highlight=False)
    data = load_dataset(config.dataset, config.data)
    src, tgt = resolve_split(config.source, config.target, data.class_names)
    precision = resolve_precision(config.train.precision)
    run_dir = prepare_run_dir(Path(out) if out is not None else default_run_dir(config.dataset)) if save else None

    splits = {"source": split_by_class(data, src, config.limit), "target": split_by_class(data, tgt, config.limit)}
    console.print(f"[bold]transferkit[/] split experiment on {data.name} ({data.origin})")
    console.print(f"source classes {', '.join(splits['source'].class_names)} -> target classes "
                  f"{', '.join(splits['target'].class_names)}; precision {precision.name} ({precision.reason})")
    results = {
        "experiment": "split",
        "status": "running",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": {"name": data.name, "origin": data.origin, "image_shape": list(data.image_shape),
                    "class_names": list(data.class_names), "train_samples": len(data.y_train),
                    "test_samples": len(data.y_test)},
        "config": {**config.to_dict(), "learning_rate": config.train.learning_rate,
                   "source_classes": list(splits["source"].class_names),
                   "target_classes": list(splits["target"].class_names)},
        "environment": describe_environment(precision),
        "phases": {},
    }
    result = SplitResult(config, results, {}, run_dir=run_dir)
    figures = {"samples": samples_figure({g: (s.x_train[:16], s.y_train[:16], list(s.class_names))
                                          for g, s in splits.items()})}
    runner = _PhaseRunner(config, data.image_shape, precision, console)
    for phase in PHASES if config.scratch else PHASES[:2]:
        split = splits["source" if phase == "source" else "target"]
        model, phase_result = runner.run(phase, split, result.models.get("source"))
        result.models[phase], result.phases[phase] = model, phase_result
        results["phases"][phase] = phase_result.to_dict()
        figures["curves"] = curves_figure(results["phases"])
        figures["training_time"] = time_figure(results["phases"])
        if run_dir is not None:
            save_model(run_dir / "weights", phase, model, list(split.class_names), PREPROCESSING)
            write_results(run_dir, results)
            save_figures(figures, run_dir)
    results["status"] = "complete"
    if run_dir is not None:
        write_results(run_dir, results)
    result.figures = figures
    console.print(comparison_table(results["phases"]))
    console.print(result.summary(), soft_wrap=True)
    if run_dir is not None:
        console.print(f"run folder: {run_dir}")
    return result


class _PhaseRunner:
    """Builds, freezes and trains the network for each phase, timing what the seeds time."""

    def __init__(self, config: SplitConfig, image_shape: tuple[int, int, int], precision: Precision,
                 console: Console):
        self.config, self.image_shape, self.precision, self.console = config, image_shape, precision, console

    def run(self, phase: str, split: ClassSplit, source_model: nn.Module | None) -> tuple[nn.Module, PhaseResult]:
        cfg = self.config.train
        # A seed per phase: each phase is reproducible on its own, whatever ran before it.
        torch.manual_seed(cfg.seed * 1000 + PHASES.index(phase))
        k = len(split.class_names)
        if phase == "transfer":
            model = self._transfer_model(source_model, k)
        else:
            model = SeedCNN(self.config.model, self.image_shape[0], self.image_shape[1:], k)
        x_train, x_test = images_to_tensor(split.x_train), images_to_tensor(split.x_test)
        y_train, y_test = torch.from_numpy(split.y_train), torch.from_numpy(split.y_test)
        counts = count_params(model)
        self.console.rule(f"phase {phase}: {', '.join(split.class_names)}")
        print_summary(self.console, f"{phase} model", layer_rows(model, self.image_shape), counts)

        optimizer = make_optimizer(trainable_parameters(model), cfg)
        progress = ConsoleProgress(self.console, phase)
        autocast_dtype = self.precision.autocast_dtype
        start = time.perf_counter()
        cache_seconds = None
        trained = model
        if phase == "transfer" and cfg.feature_cache:
            # The frozen features do not change: compute them once (in eval mode), train the classifier on them.
            prefix, tail = split_frozen(model.features)
            x_train = compute_features(prefix, x_train, cfg.eval_batch_size, autocast_dtype)
            x_test = compute_features(prefix, x_test, cfg.eval_batch_size, autocast_dtype)
            cache_seconds = time.perf_counter() - start
            trained = nn.Sequential(tail, model.classifier)
            self.console.print(f"cached frozen features {tuple(x_train.shape[1:])} for {len(x_train)} + "
                               f"{len(x_test)} images in {cache_seconds:.1f}s")
        batches = TensorBatches(x_train, y_train, cfg.batch_size, seed=cfg.seed * 1000 + PHASES.index(phase))
        history = fit(trained, optimizer, batches, x_test, y_test, cfg.epochs, cfg.eval_batch_size,
                      autocast_dtype, progress)
        seconds = time.perf_counter() - start
        model.eval()
        return model, PhaseResult(
            name=phase, classes=list(split.class_names), train_samples=len(split.y_train),
            test_samples=len(split.y_test), epochs=cfg.epochs, train_seconds=seconds,
            test_loss=history[-1].val_loss, test_accuracy=history[-1].val_accuracy, params=counts,
            history=history, feature_cache_seconds=cache_seconds,
        )

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

"""Fine-tuning a pretrained backbone on the user's image folders (seed 004): a frozen stage that trains a
new head, then optionally an unfrozen stage that trains everything with a smaller rate for the backbone."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from rich.console import Console
from torch import nn

from ..config import LR_SCHEDULES, PRECISIONS, STREAM_MODES
from ..data import cache_dir, load_folder, streaming
from ..data.archive import TarTree, open_tree
from ..data.folders import find_layout, warn_skipped
from ..data.preprocess import InputTransform
from ..data.splits import subsample
from ..data.streaming import FolderImages, Loading, collate_readable
from ..errors import UserError
from ..models import BACKBONES, BackboneClassifier, HeadConfig, count_params, layer_rows, load_backbone_weights
from ..reporting import PhaseResult, describe_environment, save_model, write_results, write_status
from ..reporting.console import ConsoleProgress, comparison_table
from ..reporting.figures import confusion_figure, curves_figure, misclassified_figure, samples_figure, save_figures
from ..reporting.report import write_report
from ..reporting.status import recording_status
from ..training import (
    FitState,
    StreamBatches,
    StreamLoader,
    StreamPass,
    TensorBatches,
    fit,
    freeze,
    resolve_precision,
    trainable_parameters,
    unfreeze,
)
from ..training.batches import usable_cores
from ..training.checkpoint import CHECKPOINT_FILE, Checkpointer
from ..training.distributed import gather_to_main, init_distributed, on_main
from ..training.predictions import Mistakes, confusion_over_ranks, find_mistakes
from ..training.runtime import keep_freed_memory
from .feature_pass import backbone_identity, frozen_features
from .split import prepare_run_dir, resumable, stop_on_interrupt


@dataclass(frozen=True)
class FinetuneConfig:
    data: str
    backbone: str = "resnet50"
    weights: str = "imagenet"
    epochs: int = 5
    unfreeze_epochs: int = 0
    batch_size: int = 32
    lr: float = 1e-3
    lr_schedule: str = "cosine"  # per stage, from lr down to 0
    backbone_lr_mult: float = 0.1
    train_batchnorm: bool = False
    augment: bool = False
    vertical_flip: bool = False
    head: HeadConfig = field(default_factory=HeadConfig)
    image_size: int | None = None
    val_fraction: float = 0.2
    limit: int | None = None
    seed: int = 0
    precision: str = "auto"
    feature_cache: bool = True
    stream: str = "auto"  # decode into memory, or stream from disk per batch (auto: when it would not fit)

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise UserError(f"--backbone {self.backbone}: unknown; choose one of {', '.join(BACKBONES)}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.unfreeze_epochs < 0:
            raise UserError(f"--unfreeze-epochs must be 0 or more, got {self.unfreeze_epochs}")
        if not self.lr > 0 or not self.backbone_lr_mult > 0:
            raise UserError("--lr and --backbone-lr-mult must be positive")
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}")
        if self.image_size is not None and self.image_size < 16:
            raise UserError(f"--image-size must be at least 16, got {self.image_size}")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"--limit must be at least 1, got {self.limit}")
        if self.seed < 0:
            raise UserError(f"--seed must be 0 or more, got {self.seed}")
        if not 0 < self.val_fraction < 1:
            raise UserError(f"--val-fraction must be between 0 and 1, got {self.val_fraction}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise UserError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.stream not in STREAM_MODES:
            raise UserError(f"--stream must be one of {', '.join(STREAM_MODES)}, got {self.stream!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FinetuneResult:
    config: FinetuneConfig
    results: dict
    phases: dict[str, PhaseResult]
    model: nn.Module
    figures: dict[str, Figure]
    run_dir: Path | None

    def summary(self) -> str:
        last = list(self.phases.values())[-1]
        return (f"{self.config.backbone} on {len(self.results['classes'])} classes: validation accuracy "
                f"{last.test_accuracy:.4f} after {', '.join(f'{p.epochs} {n}' for n, p in self.phases.items())} epochs")


def finetune(data: str | Path, *, out: str | Path | None = None, resume: str | Path | None = None,
             force: bool = False, save: bool = True, verbose: bool = True, head_units: int = 256,
             head_dropout: float = 0.5, device: str = "auto", workers: int | None = None,
             **options: object) -> FinetuneResult:
    """Train a new head on a frozen pretrained backbone, then (unfreeze_epochs > 0) fine-tune everything.

    `options` are FinetuneConfig fields (`backbone="resnet18"`, `weights="none"`, `epochs=3`, `augment=True`).
    `resume` continues an interrupted run folder from its last checkpoint (same options). `device`: auto, cpu,
    cuda or cuda:N. Started by torchrun, each process trains on its shard and rank 0 alone prints and writes.
    `workers`: DataLoader processes that decode streamed images (default: one per core; 0 decodes in this
    process, for debugging).
    """
    config = FinetuneConfig(data=str(data), head=HeadConfig(head_units, head_dropout),
                            **{k: v for k, v in options.items() if v is not None})
    if workers is not None and workers < 0:
        raise UserError(f"--workers must be 0 or more, got {workers}")
    ranks = init_distributed(device)
    console = Console(quiet=not verbose or not ranks.is_main, highlight=False,
                      width=None if sys.stdout.isatty() else 120)  # logs: wide tables
    keep_freed_memory()
    torch.manual_seed(config.seed)
    model = BackboneClassifier(config.backbone, 2, config.head)  # the class count is set once the data is read
    pre = load_backbone_weights(model, config.weights)
    if config.image_size is not None:  # keep the weights' resize/crop ratio at the size asked for
        pre = type(pre)(resize=round(config.image_size * pre.resize / pre.crop), crop=config.image_size,
                        mean=pre.mean, std=pre.std)
    previous = resumable(Path(resume), config, ranks.world_size) if resume is not None else None
    data = _read_data(config, pre.resize, ranks.world_size, previous,
                      usable_cores() if workers is None else workers)
    classes, streamed = data.classes, data.loading.stream
    model.classifier[-1] = nn.Linear(config.head.units, len(classes))
    model.to(ranks.device)
    precision = resolve_precision(config.precision, device=ranks.device)
    run_dir = Path(resume) if resume is not None else None
    if save and resume is None:
        def create() -> Path:  # by rank 0: the default name follows its clock
            new = Path(out) if out is not None else Path("runs") / (
                f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-finetune-{Path(config.data).stem}")
            prepare_run_dir(new, force)
            return new

        run_dir = on_main(create)
    writes = run_dir if ranks.is_main else None  # rank 0 alone writes; every rank reads (checkpoints, --resume)
    n_train, n_val = len(data.train[1]), len(data.val[1])
    console.print(f"[bold]transferkit finetune[/] {config.backbone} ({config.weights} weights) on {data.origin}: "
                  f"{len(classes)} classes, {n_train} train / {n_val} validation images, "
                  f"input {pre.crop}px, precision {precision.name}")
    console.print(data.loading.describe())  # files that failed to decode: a warning when they were found
    results = previous or {
        "experiment": "finetune", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": {"origin": data.origin, "class_names": classes, "train_samples": n_train,
                    "val_samples": n_val, "skipped": data.skipped, "loading": data.loading.to_dict()},
        "classes": classes, "config": config.to_dict(), "preprocessing": pre.to_dict(),
        "environment": describe_environment(precision, ranks.device), "phases": {}, "model": "weights/model.safetensors",
    }
    results.setdefault("distributed", ranks.describe(config.batch_size, config.lr))
    checkpoints = Checkpointer(run_dir / CHECKPOINT_FILE) if run_dir is not None else None
    if writes is not None:
        write_results(writes, results)

    transform = InputTransform(pre.crop, pre.mean, pre.std, augment=config.augment,
                               vertical_flip=config.vertical_flip).to(ranks.device)
    dtype = precision.autocast_dtype
    if streamed:  # the images stay on disk; DataLoader workers decode each batch
        pin = ranks.device.type == "cuda"
        xt, yt = StreamLoader(data.train[0], collate_readable, data.loading.workers, pin), None
        xv, yv = StreamPass(StreamLoader(data.val[0], collate_readable, data.loading.workers, pin),
                            config.batch_size), None
        val_images = lambda indices: data.val[0].images(indices)[0]  # noqa: E731
        val_index = lambda positions: xv.indices[positions]  # noqa: E731 - the files that decoded
    else:  # each rank trains on its shard and validates on its share of the validation images
        xt, yt = ranks.training_shard(_nchw(data.train[0]), torch.from_numpy(data.train[1]), config.seed)
        xv, yv = ranks.evaluation_shard(_nchw(data.val[0]), torch.from_numpy(data.val[1]))
        val_images = data.val[0].__getitem__
        val_index = ranks.evaluation_indices
    phases: dict[str, PhaseResult] = {}
    mistakes: dict[str, Mistakes] = {}
    figures = {"samples": samples_figure({"train": (*data.samples(16), classes)})}
    if writes is not None:
        save_figures(figures, writes)  # once: each stage below saves only the figures it redraws

    def report_skipped() -> None:
        """Files the stream could not decode, found as batches were read: warned about once, then listed."""
        found = [f"{p}: {r}" for s in (xt, xv.stream) for p, r in s.skipped.items()] if streamed else []
        new = [f for f in found if f not in results["dataset"]["skipped"]]
        if new:
            results["dataset"]["skipped"] += new
            warn_skipped(data.origin, new, stacklevel=3)

    def stage(name: str, trained: nn.Module, optimizer: torch.optim.Optimizer, train_in, train_y, val_in, val_y,
              epochs: int, seed: int, start: float, should_stop) -> None:
        """Train one stage with a checkpoint after every epoch; record its PhaseResult. `train_in` is a tensor
        (images or features, labels `train_y`) or the training images' StreamLoader; `val_in` a tensor or
        a StreamPass (`val_y` None)."""
        if writes is not None:
            write_status(writes, "running", phase=name)
        batches = (StreamBatches(train_in, config.batch_size, seed, device=ranks.device)
                   if isinstance(train_in, StreamLoader)
                   else TensorBatches(train_in, train_y, config.batch_size, seed, device=ranks.device))
        layers = layer_rows(model, (3, pre.crop, pre.crop))  # after freeze / unfreeze: trainable as trained
        state, before = checkpoints.restore(name, model, optimizer, batches, console) if checkpoints else (None, 0.0)
        state = state if state is not None else FitState()

        def checkpoint(fit_state) -> None:
            if checkpoints is not None:
                checkpoints.save(name, model, optimizer, batches, fit_state, before + time.perf_counter() - start)

        history = fit(ranks.wrap(trained), optimizer, batches, val_in, val_y, epochs, config.batch_size, dtype,
                      ConsoleProgress(console, name), state=state, on_checkpoint=checkpoint, should_stop=should_stop,
                      lr_schedule=config.lr_schedule)
        # The images it trained and validated on: a stream's files that failed to decode are not among them.
        used_train, used_val = ((n_train - len(xt.skipped), n_val - len(xv.stream.skipped)) if streamed
                                else (n_train, n_val))
        phases[name] = _phase(name, classes, used_train, used_val, history, before + time.perf_counter() - start,
                              count_params(model))
        # On this rank's share of the validation images, as validation ran (cached features where there are).
        mistakes[name] = find_mistakes(trained, val_in, val_y, val_images, classes, config.batch_size, dtype,
                                       index_of=val_index)
        report_skipped()
        phases[name].layers = layers
        phases[name].confusion_matrix = confusion_over_ranks(mistakes[name].confusion).tolist()
        phases[name].misclassified = mistakes[name].examples()
        results["phases"][name] = phases[name].to_dict()
        results["distributed"].setdefault("steps_per_rank", {})[name] = gather_to_main(state.steps)
        redrawn = {"misclassified": misclassified_figure({n: m.figure_group() for n, m in mistakes.items()})}
        figures.update(redrawn)
        if writes is not None:
            write_results(writes, results)
            save_figures(redrawn, writes)
            write_report(writes)

    with recording_status(writes), stop_on_interrupt() as should_stop:
        # Stage 1: the backbone frozen (BatchNorm statistics too), a new head trained on its features.
        freeze(model.features, eval_mode=True)  # no dropout / stochastic depth inside a frozen backbone
        if checkpoints is not None and resume is not None and checkpoints.phase() == "unfrozen":
            phases["frozen"] = frozen = PhaseResult.from_dict("frozen", results["phases"]["frozen"])  # done before
            if frozen.misclassified is not None:  # its examples for the report, read again
                mistakes["frozen"] = Mistakes.from_examples(frozen.misclassified, frozen.confusion_matrix,
                                                            val_images, classes)
        else:
            start = time.perf_counter()
            if config.feature_cache and not config.augment:
                # In memory: from the feature store when these images went through this backbone before.
                # Streamed: the images pass through the backbone once; their (small) features stay in memory.
                train_x = StreamPass(xt, config.batch_size) if streamed else xt
                (train_in, val_in), results["feature_pass"] = frozen_features(
                    config.backbone, nn.Sequential(transform, model.features), [train_x, xv],
                    backbone_identity(config.backbone, model.features, pre, precision), pre.crop, console,
                    config.batch_size, dtype, ranks.device)
                train_y, val_y = ((torch.from_numpy(data.train[0].labels[train_x.indices]),
                                   torch.from_numpy(data.val[0].labels[xv.indices])) if streamed else (yt, yv))
                trained = model.classifier
            else:
                train_in, train_y, val_in, val_y, trained = xt, yt, xv, yv, nn.Sequential(transform, model)
            optimizer = torch.optim.Adam(trainable_parameters(model), lr=config.lr, foreach=True)
            stage("frozen", trained, optimizer, train_in, train_y, val_in, val_y, config.epochs, config.seed, start,
                  should_stop)
        if config.unfreeze_epochs:
            # Stage 2: everything trains; the backbone at a smaller rate, as fastai's fine_tune does, and its
            # BatchNorm statistics kept (unless --train-batchnorm), as the Keras transfer-learning guide does.
            unfreeze(model.features, reestimate_batchnorm=config.train_batchnorm)
            optimizer = torch.optim.Adam([
                {"params": list(model.features.parameters()), "lr": config.lr * config.backbone_lr_mult},
                {"params": list(model.classifier.parameters()), "lr": config.lr}], foreach=True)
            stage("unfrozen", nn.Sequential(transform, model), optimizer, xt, yt, xv, yv, config.unfreeze_epochs,
                  config.seed + 1, time.perf_counter(), should_stop)
    model.eval()
    # The final model's, as its last stage measured it after training (no second pass over the images).
    results["confusion_matrix"] = results["phases"][list(results["phases"])[-1]]["confusion_matrix"]
    data.close()
    model.cpu()  # the model returned and saved lives on the CPU, wherever it trained
    redrawn = {"curves": curves_figure(results["phases"]),
               "confusion_matrix": confusion_figure(np.asarray(results["confusion_matrix"]), classes)}
    figures.update(redrawn)
    if writes is not None:
        save_model(writes / "weights", "model", model, classes, pre.to_dict())
        write_results(writes, results)
        save_figures(redrawn, writes)
        write_status(writes, "complete")
        (writes / CHECKPOINT_FILE).unlink(missing_ok=True)  # the model is saved
        write_report(writes)
    result = FinetuneResult(config, results, phases, model, figures, run_dir)
    console.print(comparison_table(results["phases"]))
    console.print(result.summary())
    if run_dir is not None:
        console.print(f"run folder: {run_dir}\nreport: {run_dir / 'report.html'}\n"
                      f"predict with: transferkit predict {run_dir} IMAGES...")
    return result


@dataclass
class _Data:
    """The training and validation images with their labels: uint8 NHWC arrays decoded into memory, or
    FolderImages that decode from `tree` per batch (streamed)."""

    origin: str
    classes: list[str]
    loading: Loading
    train: tuple[np.ndarray | FolderImages, np.ndarray]
    val: tuple[np.ndarray | FolderImages, np.ndarray]
    skipped: list[str]  # found while decoding into memory; a stream finds its own as it reads

    def samples(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """A few training images of every class (not the first n, which are one class) for samples.png."""
        images, labels = self.train
        shown = subsample(np.arange(len(labels)), n)
        if isinstance(images, FolderImages):
            x, kept = images.images(shown)  # decoded here: a handful
            return x, labels[kept]
        return images[shown], labels[shown]

    def close(self) -> None:
        if isinstance(self.train[0], FolderImages):
            self.train[0].tree.close()


def _read_data(config: FinetuneConfig, size: int, world_size: int, previous: dict | None, workers: int) -> _Data:
    """List the files, then decode them into memory (cached) or, when they would not fit, stream them."""
    tree = open_tree(config.data)
    try:
        layout = find_layout(tree, config.val_fraction, config.seed)
        split = "val" if "val" in layout.members else "test"
        members = {s: [layout.members[s][i] for i in subsample(np.arange(len(layout.members[s])), config.limit)]
                   for s in ("train", split)}
        n = sum(len(m) for m in members.values())
        before = (previous or {}).get("dataset", {}).get("loading")
        if before is not None:  # a resumed run reads its data as it started to, whatever memory there is now
            loading = Loading.decided(before["stream"], "as when the run started", n, size, workers)
        elif config.stream == "auto" and world_size > 1:  # one answer for every rank, whatever each one's memory
            loading = Loading.decided(False, "under torchrun every rank decodes into memory", n, size, workers)
        else:
            # Decoding into memory decodes the whole folder (--limit applies after), so that is what must fit.
            everything = sum(len(m) for s, m in layout.members.items() if s in ("train", split))
            loading = streaming.choose_loading(config.stream, everything, size, workers)
            loading = replace(loading, images=n) if loading.stream else loading
        if loading.stream:
            _check_streamable(tree, loading, world_size)
            train, val = (FolderImages(tree, members[s], size) for s in ("train", split))
            return _Data(str(tree.path), list(layout.class_names), loading, (train, train.labels),
                         (val, val.labels), [])
    except BaseException:
        tree.close()
        raise
    tree.close()
    folder = load_folder(config.data, image_size=size, channels=3, val_fraction=config.val_fraction,
                         seed=config.seed, cache_dir=cache_dir() / "images", cover=True)
    return _Data(folder.origin, list(folder.class_names), loading, _limited(folder.splits["train"], config.limit),
                 _limited(folder.splits.get("val", folder.splits.get("test")), config.limit), folder.skipped)


def _check_streamable(tree, loading: Loading, world_size: int) -> None:
    if world_size > 1:
        raise UserError(f"{tree.path}: streaming images from disk ({loading.reason}) runs in a single process; "
                        "under torchrun use --stream never with enough memory, or run without torchrun")
    if isinstance(tree, TarTree) and tree.compressed:
        raise UserError(f"{tree.path}: streaming ({loading.reason}) reads images out of order, which a compressed "
                        "tar can only do by decompressing again; extract it, or pack it as .zip or plain .tar")


def _limited(split: tuple[np.ndarray, np.ndarray], limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    x, y = split
    keep = subsample(np.arange(len(y)), limit)
    return x[keep], y[keep]


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _phase(name, classes, n_train, n_val, history, seconds, counts) -> PhaseResult:
    return PhaseResult(name=name, classes=classes, train_samples=n_train, test_samples=n_val, epochs=len(history),
                       train_seconds=seconds, test_loss=history[-1].val_loss, test_accuracy=history[-1].val_accuracy,
                       params=counts, history=history)


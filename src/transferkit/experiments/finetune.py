"""Fine-tuning a pretrained backbone on the user's image folders (seed 004): the `frozen` phase trains a new
head on the frozen backbone, then optionally the `unfrozen` phase trains everything with a smaller rate for the
backbone."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from rich.console import Console
from rich.text import Text
from torch import nn

from ..command_options import Loading
from ..config import EVAL_BATCH_SIZE, HEAD_MIN_STEPS, FinetuneConfig, HeadConfig, RunOptions, Stopping, phase_stopping
from ..data.exclusions import read_exclusions
from ..data.folders import warn_skipped
from ..data.preprocess import InputTransform
from ..data.streaming import collate_readable
from ..errors import UserError
from ..models import BackboneClassifier, Preprocessing, layer_rows, load_backbone_weights
from ..reporting import PhaseResult
from ..reporting.console import print_closing
from ..reporting.figures import confusion_figure, curves_figure, misclassified_figure, samples_figure
from ..reporting.results import baseline_verdicts
from ..training import (
    Precision,
    StreamBatches,
    StreamLoader,
    StreamPass,
    TensorBatches,
    freeze,
    images_to_tensor,
    make_optimizer,
    trainable_parameters,
    unfreeze,
)
from ..training.batches import worker_count
from ..training.class_weights import choose_class_weights
from ..training.distributed import Distributed
from ..training.metrics import MIN_CALIBRATION_IMAGES
from ..training.predictions import Mistakes
from ..training.tta import tta_record
from .baseline import feature_baseline, pixel_baseline
from .feature_pass import backbone_identity, frozen_features
from .image_data import ImageData, read_image_data
from .phase import Phase, PhaseInputs, train_phase
from .run_folder import RunFolder, weights_entry, weights_source
from .runtime import Runtime
from .seeds import derive_seed
from .spine import run_experiment


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
                f"{last.accuracy:.4f} after {', '.join(f'{p.epochs} {n}' for n, p in self.phases.items())} epochs")


def finetune(data: str | Path, *, head_units: int = HeadConfig.units, head_dropout: float = HeadConfig.dropout,
             workers: int | None = Loading.workers,
             **options: object) -> FinetuneResult:
    """Train a new head on a frozen pretrained backbone, then (unfreeze_epochs > 0) fine-tune everything.

    `options` are FinetuneConfig fields (`backbone="resnet18"`, `weights="none"`, `epochs=3`, `augment=True`),
    and RunOptions (`out`, `resume`, `force`, `save`, `verbose`, `device`, `track`) as for run_split. Started by
    torchrun, each process trains on its shard and rank 0 alone prints and writes. `workers`: DataLoader
    processes that decode streamed images (default: one per core; 0 decodes in this process, for debugging).
    """
    life = RunOptions.take(options)
    config = FinetuneConfig(data=str(data), head=HeadConfig(head_units, head_dropout),
                            **Stopping.given_epochs(options))
    return run_experiment(FinetuneExperiment(config, worker_count(workers)), life)


class FinetuneExperiment:
    """finetune on the spine (spine.py): the frozen phase (a new head on the pretrained features), then the
    unfrozen one (everything, the backbone at a smaller rate)."""

    eval_batch_size = EVAL_BATCH_SIZE

    def __init__(self, config: FinetuneConfig, workers: int):
        self.config, self.workers, self.precision = config, workers, config.precision
        self.folder_name = f"finetune-{Path(config.data).stem}"

    def prepare(self, ranks: Distributed, resumed: RunFolder | None) -> None:
        config = self.config
        torch.manual_seed(config.seed)  # the frozen phase's seed: its head is drawn from it
        self.model = model = BackboneClassifier(config.backbone, 2, config.head)  # classes: once the data is read
        self.pre = load_backbone_weights(model, weights_source(config.weights)).at_size(config.image_size)
        self.listed = read_exclusions(config.exclude) if config.exclude else frozenset()
        self.data = data = read_image_data(config.data, config.val_fraction, config.seed, config.limit,
                                           config.stream, self.pre.resize, ranks.world_size,
                                           resumed.results if resumed else None, self.workers, self.listed)
        self.classes = data.classes
        model.classifier[-1] = nn.Linear(config.head.units, len(self.classes))
        model.to(ranks.device)
        self.calibration, self.why_not = _calibration_split(config, data)  # refused here, before a folder exists
        self.weights = choose_class_weights(config.class_weights, data.train[1], len(self.classes))

    def header(self, console: Console, precision: Precision) -> None:
        config, data = self.config, self.data
        n_train, n_val = len(data.train[1]), len(data.val[1])
        console.print(Text.assemble(("transferkit finetune", "bold"), f" {config.backbone} ({config.weights} weights) on "
                                    f"{data.origin}: {len(self.classes)} classes, {n_train} train / {n_val} validation "
                                    f"images, input {self.pre.crop}px, precision {precision.name}"))
        console.print(data.loading.describe())  # files that failed to decode: a warning when they were found
        if config.exclude:
            console.print(f"excluded {len(data.excluded)} file(s) of the {len(self.listed)} listed in {config.exclude}")
        console.print("calibration: " + (f"a temperature fitted on the {n_val} validation images after each phase"
                                         if self.calibration else f"off ({self.why_not})"))

    def record(self, precision: Precision, ranks: Distributed) -> tuple[dict, dict]:
        config, data, classes = self.config, self.data, self.classes
        return {
            "experiment": "finetune",
            "dataset": {"origin": data.origin, "class_names": classes, "train_samples": len(data.train[1]),
                        "val_samples": len(data.val[1]), "skipped": data.skipped, "loading": data.loading.to_dict(),
                        **({"excluded": sorted(data.excluded)} if config.exclude else {})},
            "classes": classes, "config": config.to_dict(), "preprocessing": self.pre.to_dict(),
            "phases": {}, "model": weights_entry("model"),
            "calibration": {"split": self.calibration, "reason": self.why_not},
        }, ranks.describe(config.batch_size, config.lr)

    def train(self, run: RunFolder, runtime: Runtime, results: dict) -> None:
        config, data, model, pre, classes = self.config, self.data, self.model, self.pre, self.classes
        self.figures = figures = {"samples": samples_figure({"train": (*data.samples(16), classes)})}
        run.save_figures(figures)  # once: each phase below saves only the figures it redraws
        self.phases: dict[str, PhaseResult] = {}
        mistakes: dict[str, Mistakes] = {}
        self.names = names = ["frozen", "unfrozen"] if config.unfreeze_epochs else ["frozen"]
        inputs = _Inputs.of(config, data, pre, runtime)
        for name in names:
            phase = (_frozen_phase if name == "frozen" else _unfrozen_phase)(config, model, pre, inputs, runtime)
            phase = replace(phase, class_weights=self.weights, calibration=self.calibration,
                            validation_split=data.validation_split)
            self.phases[name], found = train_phase(phase, run, runtime)
            if found is not None:
                mistakes[name] = found
            inputs.report_skipped(results)
            results["phases"][name] = self.phases[name].to_dict()
            if name == "frozen" and "baselines" not in results:  # the backbone as pretrained, before unfreezing
                results["baselines"] = _baselines(config, model, pre, inputs, runtime)
            redrawn = {"misclassified": misclassified_figure({n: m.figure_group() for n, m in mistakes.items()})}
            figures.update(redrawn)
            run.save_phase(name, model, classes, pre.to_dict(), redrawn, last=name == names[-1])
        self.temperature = run.temperature(names[-1])
        if config.tta:
            results["tta"] = tta_record(nn.Sequential(inputs.transform, model), inputs.val_x, inputs.val_y,
                                        len(classes), self.temperature, runtime.eval_batch_size,
                                        runtime.autocast_dtype, runtime.device)
            runtime.console.print(_describe_tta(results["tta"]))

    def finish(self, run: RunFolder, results: dict) -> None:
        self.data.close()
        self.model.eval().cpu()  # the model returned and saved lives on the CPU, wherever it trained
        # The final model's, as its last phase measured it after training (no second pass over the images).
        results["confusion_matrix"] = results["phases"][self.names[-1]]["confusion_matrix"]
        redrawn = {"curves": curves_figure(results["phases"]),
                   "confusion_matrix": confusion_figure(np.asarray(results["confusion_matrix"]), self.classes)}
        self.figures.update(redrawn)
        run.save_weights("model", self.model, self.classes, self.pre.to_dict(), self.temperature)  # predict's
        run.save_results()
        run.save_figures(redrawn)

    def closing(self, console: Console, run: RunFolder, results: dict) -> FinetuneResult:
        result = FinetuneResult(self.config, results, self.phases, self.model, self.figures, run.path)
        print_closing(console, results["phases"], result.summary(), run.path,
                      then=f"predict with: transferkit predict {run.path} IMAGES...")
        for sentence in baseline_verdicts(results):
            console.print(sentence, soft_wrap=True)
        return result


def _calibration_split(config: FinetuneConfig, data: ImageData) -> tuple[str | None, str | None]:
    """("validation", None) when a temperature can be fitted on the validation images, else (None, why not);
    --calibrate asked for it, so a reason not to is one line naming the fix."""
    n, why_not = len(data.val[1]), None
    if config.calibrate is False:
        why_not = "--no-calibrate"
    elif data.validation_split == "test":
        why_not = ("the validation images are the test/ folder (there is no val/), which must fit nothing; "
                   "add a val/ folder")
    elif n < MIN_CALIBRATION_IMAGES:
        why_not = (f"the validation split has {n} images and a temperature needs at least {MIN_CALIBRATION_IMAGES}; "
                   "add images to val/ (or, without val/, raise --val-fraction)")
    if why_not is None:
        return "validation", None
    if config.calibrate:
        raise UserError(f"--calibrate: {why_not} (or drop --calibrate)")
    return None, why_not


def _describe_tta(tta: dict) -> str:
    plain, augmented = tta["without"], tta["with"]
    return (f"test-time augmentation ({' + '.join(tta['views'])}) on the validation images: accuracy "
            f"{plain['accuracy']:.4f} -> {augmented['accuracy']:.4f}, balanced accuracy "
            f"{plain['balanced_accuracy']:.4f} -> {augmented['balanced_accuracy']:.4f}")


@dataclass
class _Inputs:
    """The training and validation images both phases use: this rank's share of uint8 NCHW tensors in memory,
    or streams that decode them from disk per batch."""

    train_x: torch.Tensor | StreamLoader
    train_y: torch.Tensor | None  # None: a stream's batches carry their labels
    val_x: torch.Tensor | StreamPass
    val_y: torch.Tensor | None
    val_images: Callable[[np.ndarray], np.ndarray]  # by index, as people see them
    index_of: Callable[[np.ndarray], np.ndarray]  # positions in val_x -> indices in the validation set
    data: ImageData
    transform: InputTransform  # uint8 images -> what the backbone eats (with --augment: random crops, flips)
    # The frozen backbone's features with their labels, and the pass's record (_frozen_features), once computed.
    features: tuple | None = None

    @classmethod
    def of(cls, config: FinetuneConfig, data: ImageData, pre: Preprocessing, runtime: Runtime) -> _Inputs:
        transform = InputTransform(pre.crop, pre.mean, pre.std, augment=config.augment,
                                   vertical_flip=config.vertical_flip).to(runtime.device)
        if data.loading.stream:  # the images stay on disk; DataLoader workers decode each batch
            pin = runtime.device.type == "cuda"
            train = StreamLoader(data.train[0], collate_readable, data.loading.workers, pin)
            val = StreamPass(StreamLoader(data.val[0], collate_readable, data.loading.workers, pin),
                             runtime.eval_batch_size)
            return cls(train, None, val, None, lambda indices: data.val[0].images(indices)[0],
                       lambda positions: val.indices[positions], data, transform)  # the files that decoded
        # Each rank trains on its shard and validates on its share of the validation images.
        ranks = runtime.ranks
        train_x, train_y = ranks.training_shard(images_to_tensor(data.train[0], scale=False),
                                                torch.from_numpy(data.train[1]), config.seed)
        val_x, val_y = ranks.evaluation_shard(images_to_tensor(data.val[0], scale=False), torch.from_numpy(data.val[1]))
        return cls(train_x, train_y, val_x, val_y, data.val[0].__getitem__, ranks.evaluation_indices, data, transform)

    @property
    def streamed(self) -> bool:
        return self.train_y is None

    def batches(self, x: torch.Tensor | StreamLoader, y: torch.Tensor | None, batch_size: int, seed: int,
                device: torch.device) -> StreamBatches | TensorBatches:
        return (StreamBatches(x, batch_size, seed, device=device) if isinstance(x, StreamLoader)
                else TensorBatches(x, y, batch_size, seed, device=device))

    def samples(self) -> tuple[int, int]:
        """The images trained and validated on: a stream's files that failed to decode are not among them."""
        n_train, n_val = len(self.data.train[1]), len(self.data.val[1])
        if self.streamed:
            return n_train - len(self.train_x.skipped), n_val - len(self.val_x.stream.skipped)
        return n_train, n_val

    def report_skipped(self, results: dict) -> None:
        """Files the stream could not decode, found as batches were read: warned about once, then listed."""
        found = [f"{p}: {r}" for s in (self.train_x, self.val_x.stream) for p, r in s.skipped.items()] if self.streamed else []
        new = [f for f in found if f not in results["dataset"]["skipped"]]
        if new:
            results["dataset"]["skipped"] += new
            warn_skipped(self.data.origin, new, stacklevel=3)


def _frozen_phase(config: FinetuneConfig, model: BackboneClassifier, pre: Preprocessing, inputs: _Inputs,
                  runtime: Runtime) -> Phase:
    """The backbone frozen (BatchNorm statistics too), a new head trained on its features."""
    freeze(model.features, eval_mode=True)  # no dropout / stochastic depth inside a frozen backbone
    transform = inputs.transform
    optimizer = make_optimizer(trainable_parameters(model), config.train)

    def phase_inputs() -> PhaseInputs:
        if not config.feature_cache or config.augment:
            return PhaseInputs(nn.Sequential(transform, model), inputs.batches(
                inputs.train_x, inputs.train_y, config.batch_size, config.seed, runtime.device),
                inputs.val_x, inputs.val_y, inputs.index_of)
        (train_f, train_y), (val_f, val_y), record = _frozen_features(config, model, pre, inputs, runtime)
        return PhaseInputs(model.classifier, TensorBatches(train_f, train_y, config.batch_size, config.seed,
                                                           device=runtime.device), val_f, val_y, inputs.index_of,
                           feature_pass=record)

    # A head on cached features takes thousands of cheap steps; through the backbone (augmented) a step is not cheap.
    cached = config.feature_cache and not config.augment
    return Phase("frozen", model, optimizer, phase_inputs, config.epochs, config.lr_schedule, inputs.data.classes,
                 layer_rows(model, (3, pre.crop, pre.crop)), inputs.val_images, inputs.samples,
                 stopping=config.train.stopping(HEAD_MIN_STEPS if cached else Stopping.min_steps))


def _frozen_features(config: FinetuneConfig, model: BackboneClassifier, pre: Preprocessing, inputs: _Inputs,
                     runtime: Runtime) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor], dict]:
    """The frozen backbone's features of the training and validation images, each with its labels, and the
    pass's record; computed once, kept on `inputs` for the frozen phase and the baselines alike."""
    if inputs.features is None:
        # In memory: from the feature store when these images went through this backbone before.
        # Streamed: the images pass through the backbone once; their (small) features stay in memory.
        train_x = StreamPass(inputs.train_x, runtime.eval_batch_size) if inputs.streamed else inputs.train_x
        (train_f, val_f), record = frozen_features(
            config.backbone, nn.Sequential(inputs.transform, model.features), [train_x, inputs.val_x],
            backbone_identity(config.backbone, model.features, pre, runtime.precision), pre.crop, runtime)
        train_y, val_y = ((torch.from_numpy(inputs.data.train[0].labels[train_x.indices]),
                           torch.from_numpy(inputs.data.val[0].labels[inputs.val_x.indices])) if inputs.streamed
                          else (inputs.train_y, inputs.val_y))
        inputs.features = ((train_f, train_y), (val_f, val_y), record)
    return inputs.features


def _baselines(config: FinetuneConfig, model: BackboneClassifier, pre: Preprocessing, inputs: _Inputs,
               runtime: Runtime) -> list[dict]:
    """The logistic-regression baselines (experiments/baseline.py) on the backbone as pretrained, each printed.
    None under torchrun, where each process holds a share of the images."""
    if runtime.ranks.world_size > 1:
        runtime.console.print("baselines: none under torchrun (each process holds a share of the images)")
        return []
    train, val, _ = _frozen_features(config, model, pre, inputs, runtime)
    if not len(train[1]) or not len(val[1]):  # a stream whose files all failed to decode
        return []
    found = [feature_baseline(config.backbone, train, val),
             pixel_baseline(config.data, config.val_fraction, config.seed, config.limit, inputs.data)]
    for baseline in filter(None, found):
        runtime.console.print(baseline.describe())
    return [b.to_dict() for b in found if b is not None]


def _unfrozen_phase(config: FinetuneConfig, model: BackboneClassifier, pre: Preprocessing, inputs: _Inputs,
                    runtime: Runtime) -> Phase:
    """Everything trains; the backbone at a smaller rate, as fastai's fine_tune does, and its BatchNorm
    statistics kept (unless --train-batchnorm), as the Keras transfer-learning guide does."""
    seed = derive_seed(config.seed, phase=1)  # the frozen phase's is the run's seed itself
    # A seed per phase, as the split experiment's: the phase trains alike after the frozen one ran here or was
    # read again from its weights by a resumed run.
    torch.manual_seed(seed)
    unfreeze(model.features, reestimate_batchnorm=config.train_batchnorm)
    optimizer = make_optimizer([{"params": list(model.features.parameters()), "lr": config.lr * config.backbone_lr_mult},
                                {"params": list(model.classifier.parameters())}], config.train)
    trained = nn.Sequential(inputs.transform, model)
    return Phase("unfrozen", model, optimizer, lambda: PhaseInputs(
        trained, inputs.batches(inputs.train_x, inputs.train_y, config.batch_size, seed, runtime.device),
        inputs.val_x, inputs.val_y, inputs.index_of), config.unfreeze_epochs, config.lr_schedule, inputs.data.classes,
        layer_rows(model, (3, pre.crop, pre.crop)), inputs.val_images, inputs.samples,
        stopping=phase_stopping(config.unfreeze_epochs, config.min_steps, config.patience))

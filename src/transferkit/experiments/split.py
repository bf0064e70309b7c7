"""The split-class transfer experiment: train on source classes, freeze features, transfer to target classes,
and train the same network from scratch on the target classes as the control."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from rich.console import Console
from rich.text import Text
from torch import nn

from ..config import BACKBONE_PRESET, PRESETS, ModelConfig, RunOptions, SplitConfig, Stopping, TrainConfig
from ..data import ClassSplit, load_dataset, resolve_split, split_by_class
from ..data.exclusions import read_exclusions
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
from ..reporting import PhaseResult
from ..reporting.console import print_closing, print_summary, transfer_verdict
from ..reporting.figures import curves_figure, misclassified_figure, samples_figure, time_figure
from ..training import (
    Precision,
    TensorBatches,
    compute_features,
    freeze,
    images_to_tensor,
    make_optimizer,
    split_frozen,
    trainable_parameters,
)
from ..training.class_weights import choose_class_weights
from ..training.distributed import Distributed
from ..training.predictions import Mistakes
from .feature_pass import backbone_identity, frozen_features
from .phase import Phase, PhaseInputs, train_phase
from .run_folder import RunFolder, weights_entry, weights_source
from .runtime import Runtime
from .seeds import derive_seed
from .spine import run_experiment

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


def make_split_config(dataset: str = SplitConfig.dataset, source: object = None, target: object = None,
                      **options: object) -> SplitConfig:
    """Build a SplitConfig from flat options (`epochs=5, filters=32, head="reset"`), as the CLI gives them.

    Options left at None take the data set's preset (config.PRESETS), then the dataclass defaults.
    """
    given = Stopping.given_epochs({k: v for k, v in options.items() if v is not None})
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


def run_split(dataset: str = SplitConfig.dataset, source: object = None, target: object = None, **options: object
              ) -> SplitResult:
    """Run the split experiment (source, transfer, scratch) and return its SplitResult.

    `source` / `target`: class names or indices (`"0-4"`, `range(5)`, `"dog,frog"`); by default the first and
    the second half of the classes. `options` are any field of SplitConfig, ModelConfig or TrainConfig
    (`epochs=5`, `limit=1000`, `head="reset"`), or of RunOptions (`out`, `resume`, `force`, `save`, `verbose`,
    `device`, `track`). A run folder (default runs/<UTC time>-<dataset>) receives results.json, history.csv, weights/,
    figures and a checkpoint after every epoch. Started by torchrun, each process trains on its shard of the
    data and rank 0 alone prints and writes.
    """
    life = RunOptions.take(options)
    return run_experiment(SplitExperiment(make_split_config(dataset, source, target, **options)), life)


class SplitExperiment:
    """The split experiment on the spine (spine.py): source classes, then the target classes by transfer and
    from scratch; with a pretrained backbone, its ImageNet training is the source and only the target trains."""

    def __init__(self, config: SplitConfig):
        self.config, self.precision = config, config.train.precision
        self.folder_name = Path(config.dataset).stem or "data"
        self.eval_batch_size = config.train.eval_batch_size

    def prepare(self, ranks: Distributed, resumed: RunFolder | None) -> None:
        config = self.config
        self.data = data = load_dataset(config.dataset, config.data, val_fraction=config.val_fraction,
                                        seed=config.train.seed, image_size=config.image_size,
                                        exclude=read_exclusions(config.exclude) if config.exclude else frozenset())
        src, tgt = resolve_split(config.source, config.target, data.class_names, source_trained=not config.backbone)
        # Sizes, backbones and weights that do not fit fail here, before a run folder exists.
        self.backbone = PretrainedBackbone(config, data.image_shape, len(tgt)) if config.backbone else None
        if self.backbone is None:
            SeedCNN(config.model, data.image_shape[0], data.image_shape[1:], len(src))
        self.target = fewer_training_images(split_by_class(data, tgt, config.limit), config.shots,
                                            config.train_fraction, config.train.seed)
        self.splits = ({"target": self.target} if self.backbone else
                       {"source": split_by_class(data, src, config.limit), "target": self.target})
        self.ranks = ranks

    def header(self, console: Console, precision: Precision) -> None:
        config, target = self.config, self.target
        if self.backbone:
            self.source_text = (f"{config.backbone} with ImageNet weights" if config.weights == "imagenet"
                                else f"{config.backbone} with weights {config.weights}")
        else:
            self.source_text = f"classes {', '.join(self.splits['source'].class_names)}"
        console.print(Text.assemble(("transferkit", "bold"), f" split experiment on {self.data.name} "
                                    f"({self.data.origin})"))
        console.print(f"source {self.source_text} -> target classes {', '.join(target.class_names)} "
                      f"({len(target.y_train)} training images); precision {precision.name} ({precision.reason})")

    def record(self, precision: Precision, ranks: Distributed) -> tuple[dict, dict]:
        config, data, splits = self.config, self.data, self.splits
        return {
            "experiment": "split",
            "dataset": {"name": data.name, "origin": data.origin, "image_shape": list(data.image_shape),
                        "class_names": list(data.class_names), "train_samples": len(data.y_train),
                        f"{data.validation_split}_samples": len(data.y_test), "skipped": list(data.skipped),
                        **({"excluded": list(data.excluded)} if config.exclude else {})},
            "config": {**config.to_dict(), "learning_rate": config.train.learning_rate,
                       "source_classes": list(splits["source"].class_names) if "source" in splits else [],
                       "target_classes": list(self.target.class_names)},
            "source": self.source_text,
            "phases": {},
            "model": weights_entry("transfer"),  # what `transferkit predict` uses: the target classifier
        }, ranks.describe(config.train.batch_size, config.train.learning_rate)

    def train(self, run: RunFolder, runtime: Runtime, results: dict) -> None:
        config, splits = self.config, self.splits
        shown = {g: subsample(np.arange(len(s.y_train)), 16) for g, s in splits.items()}  # every class, not the first
        self.figures = figures = {"samples": samples_figure({g: (s.x_train[shown[g]], s.y_train[shown[g]],
                                                                 list(s.class_names)) for g, s in splits.items()})}
        run.save_figures(figures)  # once: each phase below saves only the figures it redraws
        self.result = result = SplitResult(config, results, {}, run_dir=run.path)
        names = [p for p in PHASES if (p != "source" or not self.backbone) and (p != "scratch" or config.scratch)]
        mistakes: dict[str, Mistakes] = {}
        phases = _Phases(config, self.data.image_shape, runtime, self.backbone, self.data.validation_split)
        for name in names:
            split = splits["source" if name == "source" else "target"]
            phase = phases.phase(name, split, result.models.get("source"))
            result.phases[name], found = train_phase(phase, run, runtime)
            if found is not None:
                mistakes[name] = found
            results["phases"][name] = result.phases[name].to_dict()
            result.models[name] = phase.model.eval().cpu()  # on the CPU: saved, summarised, copied by the next
            redrawn = {"curves": curves_figure(results["phases"]), "training_time": time_figure(results["phases"])}
            if mistakes:
                redrawn["misclassified"] = misclassified_figure({p: m.figure_group() for p, m in mistakes.items()})
            figures.update(redrawn)
            run.save_phase(name, phase.model, split.class_names, phases.preprocessing(name), redrawn,
                           last=name == names[-1])

    def finish(self, run: RunFolder, results: dict) -> None:
        self.result.figures = self.figures

    def closing(self, console: Console, run: RunFolder, results: dict) -> SplitResult:
        print_closing(console, results["phases"], self.result.summary(), run.path, model="transfer")  # predict's
        return self.result


def transfer_model(source_model: SeedCNN, num_classes: int, head: str) -> SeedCNN:
    """The source network with its features frozen and a classifier for `num_classes`: `head` reuse keeps the
    source-trained dense layers (only an output layer of the wrong size is new), reset starts them anew."""
    model = copy.deepcopy(source_model)
    freeze(model.features)
    if head == "reset":
        model.reset_classifier(num_classes)
    elif model.num_classes != num_classes:
        model.classifier.dense2 = nn.Linear(model.classifier.dense2.in_features, num_classes)
        keras_init(model.classifier.dense2)
    return model


class _Phases:
    """Each phase's network, optimizer and inputs: the seed network, or a pretrained backbone."""

    def __init__(self, config: SplitConfig, image_shape: tuple[int, int, int], runtime: Runtime,
                 backbone: PretrainedBackbone | None, validation_split: str = "test"):
        self.config, self.image_shape, self.runtime, self.backbone = config, image_shape, runtime, backbone
        self.validation_split = validation_split  # the data set's x_test: a test split, or a validation split

    def preprocessing(self, phase: str) -> dict:
        """What predict needs to feed the saved network: the backbone's, or the data set's size scaled to [0, 1]."""
        if self.backbone is not None:
            return self.backbone.preprocessing(phase).to_dict()
        return {"kind": "scale", "channels": self.image_shape[0], "size": list(self.image_shape[1:])}

    def phase(self, name: str, split: ClassSplit, source_model: nn.Module | None) -> Phase:
        cfg, runtime = self.config.train, self.runtime
        seed = derive_seed(cfg.seed, phase=PHASES.index(name))
        # A seed per phase: each phase is reproducible on its own, whatever ran before it.
        torch.manual_seed(seed)
        transform = None  # the pretrained backbones' resizing and normalisation, in front of the model
        if self.backbone is not None:
            model, transform = self.backbone.model(name)
        elif name == "transfer":
            model = transfer_model(source_model, len(split.class_names), self.config.head)
        else:
            model = SeedCNN(self.config.model, self.image_shape[0], self.image_shape[1:], len(split.class_names))
        runtime.console.rule(f"phase {name}: {', '.join(split.class_names)}")
        layers = (layer_rows(model, self.image_shape) if transform is None
                  else layer_rows(model, (self.image_shape[0], transform.crop, transform.crop), 2))
        print_summary(runtime.console, f"{name} model", layers, count_params(model))
        model.to(runtime.device)  # before the optimizer takes its parameters
        if transform is not None:
            transform.to(runtime.device)
        optimizer = make_optimizer(trainable_parameters(model), cfg)

        def inputs() -> PhaseInputs:
            # uint8 for the backbones: their InputTransform scales and normalises as the weights want.
            x_train, x_test = (images_to_tensor(x, scale=transform is None) for x in (split.x_train, split.x_test))
            # Each rank trains on its shard and validates on its share of the test images.
            x_train, y_train = runtime.ranks.training_shard(x_train, torch.from_numpy(split.y_train), seed)
            x_test, y_test = runtime.ranks.evaluation_shard(x_test, torch.from_numpy(split.y_test))
            trained, seconds, record = model if transform is None else nn.Sequential(transform, model), None, None
            if name == "transfer" and cfg.feature_cache:
                start = time.perf_counter()
                trained, (x_train, x_test), record = self._on_features(model, transform, [x_train, x_test])
                seconds = time.perf_counter() - start
            return PhaseInputs(trained, TensorBatches(x_train, y_train, cfg.batch_size, seed=seed, device=runtime.device),
                               x_test, y_test, runtime.ranks.evaluation_indices, seconds, record)

        return Phase(name, model, optimizer, inputs, cfg.epochs, cfg.lr_schedule, list(split.class_names), layers,
                     split.x_test.__getitem__, lambda: (len(split.y_train), len(split.y_test)),
                     class_weights=choose_class_weights(cfg.class_weights, split.y_train, len(split.class_names)),
                     stopping=cfg.stopping(), validation_split=self.validation_split)

    def _on_features(self, model: nn.Module, transform: InputTransform | None,
                     images: list[torch.Tensor]) -> tuple[nn.Module, list[torch.Tensor], dict | None]:
        """The transfer phase's frozen features, computed once (in eval mode), the part that trains on them, and
        the backbone's pass as results.json records it."""
        runtime = self.runtime
        if self.backbone is not None:
            # Kept on disk: a second run on the same images does no pass through the backbone at all.
            features, record = frozen_features(
                self.config.backbone, nn.Sequential(transform, model.features), images,
                self.backbone.identity(runtime.precision), transform.crop, runtime)
            return model.classifier, features, record
        prefix, tail = split_frozen(model.features)
        start = time.perf_counter()
        features = [compute_features(prefix, x, runtime.eval_batch_size, runtime.autocast_dtype, device=runtime.device)
                    for x in images]
        runtime.console.print(f"cached frozen features {tuple(features[0].shape[1:])} for {len(images[0])} + "
                              f"{len(images[1])} images in {time.perf_counter() - start:.1f}s")
        return nn.Sequential(tail, model.classifier), features, None


class PretrainedBackbone:
    """The split experiment on a pretrained backbone: the transfer phase freezes it (ImageNet weights) and
    trains a new head on its features at the weights' input size; the scratch control trains the same network
    from random weights at the data's own size (enlarging 32 px images to 224 px adds no information, and
    training a backbone at 224 px would take hours on a CPU)."""

    def __init__(self, config: SplitConfig, image_shape: tuple[int, int, int], num_classes: int):
        if image_shape[0] != 3:
            raise UserError(f"--backbone {config.backbone}: needs colour images; this data set has "
                            f"{image_shape[0]} channel(s)")
        self.config, self.image_shape, self.num_classes = config, image_shape, num_classes
        # Drawn from --seed: with --weights none the source is a random network, the same one whatever ran
        # before in the process (a second API call, a resumed study).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.train.seed)
            self.pretrained = BackboneClassifier(config.backbone, num_classes)
            self.weights = load_backbone_weights(self.pretrained, weights_source(config.weights))  # errors now

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


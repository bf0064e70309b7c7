"""How a study's unit trains: its base network (baseA or baseB of its seed, once), then its points, each
recorded as it finishes and resumed from its checkpoint. study_backbone.py's BackboneTrainer changes what the
networks are for a pretrained backbone."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Iterator

import torch
from torch import nn

from ..data import ClassSplit
from ..models import SeedCNN, count_params
from ..reporting import PhaseResult
from ..reporting.console import make_console
from ..training import (
    TensorBatches,
    compute_features,
    freeze,
    images_to_tensor,
    make_optimizer,
    split_frozen,
    trainable_parameters,
)
from ..training.checkpoint import UnreadableCheckpoint
from ..training.class_weights import choose_class_weights
from .phase import Phase, PhaseInputs, train_phase
from .run_folder import RunFolder, UnreadableWeights
from .runtime import Runtime
from .seeds import derive_seed
from .split import transfer_model
from .study_plan import (
    ARMS,
    PREFIX_CACHE_BYTES,
    WEIGHT_LAYERS,
    Point,
    StudyConfig,
    Unit,
    shot_indices,
)


class Trainer:
    """Trains a unit: its base network (baseA or baseB of its seed, once), then its points. Each training is
    handed to `record` (StudyRecorder.record, in this process or the parent's)."""

    scaled = True  # the target images as floats in [0, 1], as the seed network eats them

    def __init__(self, config: StudyConfig, image_shape: tuple[int, int, int], a: ClassSplit, b: ClassSplit,
                 run: RunFolder, runtime: Runtime, record: Callable[..., None]):
        self.config, self.image_shape, self.a, self.b, self.run = config, image_shape, a, b, run
        self.runtime, self.record = runtime, record
        # The points' own epochs print nothing: a study prints a line a point, with the time left.
        self.quiet = dataclasses.replace(runtime, console=make_console(quiet=True))
        # The target images as the network eats them, converted once: every point indexes or uses them.
        self.x_train, self.x_test = (images_to_tensor(x, scale=self.scaled) for x in (b.x_train, b.x_test))

    def unit(self, unit: Unit) -> None:
        """Train `unit` whole, each training handed to `record` as it finishes."""
        for _ in self.trainings(unit):
            pass

    def trainings(self, unit: Unit) -> Iterator[None]:
        """`unit`, a training at a time: yields after each training was handed to `record` (a Ray task sends it
        on from there)."""
        base = None
        if unit.base is not None:  # baseA (the source network) is not a point; baseB is (the reference line)
            split, recorded = (self.a, False) if unit.base == "baseA" else (self.b, True)
            base = self._train(Point(unit.base, unit.seed), split, recorded)
            yield
        if self.config.kind == "shots":
            if base is not None:
                # The frozen features of every target image through this seed's source network, once: each
                # shot count's transfer point indexes them.
                prefix, self.tail = split_frozen(base.features)
                self.features = self._through(prefix)
            for point in unit.points:
                self._shots_point(point, base)
                yield
            return
        for point in unit.points:
            self._freeze_point(point, base)
            yield

    def _shots_point(self, point: Point, source: SeedCNN) -> None:
        keep = shot_indices(self.b.y_train, point.shots, derive_seed(self.config.split.train.seed, repeat=point.seed))
        k = len(self.b.class_names)
        torch.manual_seed(self._point_seed(point))
        if point.arm == "transfer":
            model = transfer_model(source, k, self.config.split.head)
            trained = nn.Sequential(self.tail, model.classifier)
            x_train, x_test = self.features[0][keep], self.features[1]
        else:
            model = trained = self._network(k)
            x_train, x_test = self.x_train[keep], self.x_test
        self._fit(point, model, trained, x_train, torch.from_numpy(self.b.y_train[keep]), x_test)

    def _freeze_point(self, point: Point, copied_from: SeedCNN) -> None:
        """A new target network whose first `cut` weight layers are copied (frozen unless the arm ends in +).
        With both conv layers frozen (BnB, AnB at cut 2 and 3) they run once over the target images and the rest
        trains on their output, as the shots study's transfer arm does: not once a step."""
        torch.manual_seed(self._point_seed(point))
        model = self._network(len(self.b.class_names))
        for name in WEIGHT_LAYERS[:point.cut]:
            layer = model.get_submodule(name)
            layer.load_state_dict(copied_from.get_submodule(name).state_dict())
            if not point.arm.endswith("+"):
                freeze(layer)
        # The conv layers and their pool (split_frozen: up to the dropout) are deterministic once frozen; the
        # dropout after them and the dense layers (dense1 frozen at cut 3) act at every step as before. At
        # cut 1 conv2 trains: conv1's output (86 KB an MNIST image) would save little of a step.
        prefix, tail = split_frozen(model.features)
        cached = not point.arm.endswith("+") and point.cut >= 2 and self._fits(model.classifier.dense1.in_features)

        def on_frozen_output() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
            """The frozen conv layers once over every target image (part of the point's time)."""
            return nn.Sequential(tail, model.classifier), *self._through(prefix)

        self._fit(point, model, model, self.x_train, torch.from_numpy(self.b.y_train), self.x_test,
                  prepare=on_frozen_output if cached else None)

    def _train(self, point: Point, split: ClassSplit, record: bool) -> SeedCNN:
        """A whole network trained on `split` (baseA on the source classes, baseB on the target's), its
        weights kept: the points copy from it, and a resumed study reads it again."""
        torch.manual_seed(self._point_seed(point))
        model = self._network(len(split.class_names))
        self._fit(point, model, model, images_to_tensor(split.x_train), torch.from_numpy(split.y_train),
                  images_to_tensor(split.x_test), split, True, record)
        return model.eval()

    def _fit(self, point: Point, model: nn.Module, trained: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor,
             x_test: torch.Tensor, split: ClassSplit | None = None, weights: bool = False,
             record: bool = True, prepare: Callable[[], tuple[nn.Module, torch.Tensor, torch.Tensor]] | None = None,
             ) -> None:
        """Train `trained` (the part of `model` that trains) on `x_train` and test it on `x_test`. `prepare`,
        where given, replaces those three when the point trains (its time counts; a finished point skips it)."""
        cfg, runtime, split, n = self.config.split.train, self.quiet, split or self.b, len(y_train)
        seed = self._point_seed(point)
        batch = min(cfg.batch_size, n)  # no image twice in a batch: a 1-shot set is one small batch
        # At least min_steps optimizer steps in all, spread over the epochs (see STUDY_MIN_STEPS).
        per_epoch = -(-self.config.min_steps // cfg.epochs)
        model.to(runtime.device)
        optimizer = make_optimizer(trainable_parameters(model), cfg)
        y_test = torch.from_numpy(split.y_test)

        def inputs() -> PhaseInputs:
            net, xs, x_val = prepare() if prepare is not None else (trained, x_train, x_test)
            return PhaseInputs(net, TensorBatches(xs, y_train, batch, seed, device=runtime.device, min_steps=per_epoch),
                               x_val, y_test)

        phase = Phase(point.name, model, optimizer, inputs, cfg.epochs, cfg.lr_schedule, list(split.class_names), [],
                      split.x_test.__getitem__, lambda: (n, len(split.y_test)), weights=weights,
                      class_weights=choose_class_weights(cfg.class_weights, y_train.numpy(), len(split.class_names)))
        result, finished_before = self._train_phase(phase)
        model.eval().cpu()
        steps = self.run.results["distributed"]["steps_per_rank"].get(point.name, [0])
        if weights:
            self.run.save_weights(point.name, model, list(split.class_names), self._preprocessing())
        self.record(point.name, result.to_dict(), {
            "arm": point.arm, "shots": point.shots, "cut": point.cut, "seed": point.seed,
            "train_samples": n, "steps": sum(steps),
            "test_accuracy": result.accuracy, "test_loss": result.loss,
            "seconds": round(result.train_seconds, 3), "trainable": count_params(model).trainable,
        } if record else None, steps, finished_before)

    def _train_phase(self, phase: Phase) -> tuple[PhaseResult, bool]:
        """train_phase, and whether the training had finished before (read back). What a resumed study cannot
        read is computed again, the finished points kept (each training draws from its own seed, so it comes
        out the same): a finished network whose weights are missing or cut short is trained again, a
        checkpoint cut short is deleted and its training starts over."""
        while True:
            finished = self.run.finished(phase.name)
            try:
                return train_phase(phase, self.run, self.quiet)[0], finished
            except UnreadableWeights as e:
                for records in (self.run.results["phases"], self.run.results["points"],
                                self.run.results["distributed"].get("steps_per_rank", {})):
                    records.pop(phase.name, None)
                warnings.warn(f"{e.path}: cannot be read ({e.reason}); training {phase.name} again from its seed "
                              "(the same network; the finished points are kept)", stacklevel=2)
            except UnreadableCheckpoint as e:
                e.path.unlink(missing_ok=True)
                warnings.warn(f"{e.path}: cannot be read ({e.reason}), deleted; training {phase.name} again from "
                              "its start (the finished points are kept)", stacklevel=2)

    def _through(self, prefix: nn.Module) -> list[torch.Tensor]:
        """The frozen `prefix`'s output of every target training and test image, computed once in eval mode."""
        runtime = self.runtime
        return [compute_features(prefix, x, runtime.eval_batch_size, runtime.autocast_dtype, device=runtime.device)
                for x in (self.x_train, self.x_test)]

    def _fits(self, values_per_image: int) -> bool:
        """Whether a frozen prefix's float32 output of every target image fits in PREFIX_CACHE_BYTES."""
        return (len(self.x_train) + len(self.x_test)) * values_per_image * 4 <= PREFIX_CACHE_BYTES

    def _preprocessing(self) -> dict:
        """What predict needs to feed a saved network: the data set's size scaled to [0, 1]."""
        return {"kind": "scale", "channels": self.image_shape[0], "size": list(self.image_shape[1:])}

    def _network(self, num_classes: int) -> SeedCNN:
        return SeedCNN(self.config.split.model, self.image_shape[0], self.image_shape[1:], num_classes)

    def _point_seed(self, point: Point) -> int:
        """Each point seeds its own generator: the same point draws the same numbers in a resumed study."""
        arm = (("baseA", "baseB") + ARMS[self.config.kind]).index(point.arm)
        x = point.shots if point.shots is not None else (point.cut or 0)
        return derive_seed(self.config.split.train.seed, repeat=point.seed, arm=arm, size=x)

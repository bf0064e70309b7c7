"""Studies on a pretrained backbone (`transferkit study shots|freeze --backbone NAME`): the source is the
backbone's pretraining (ImageNet with --weights imagenet), so no source network (baseA) is trained.

- shots: the transfer arm is `run --backbone`'s transfer phase, a new head on the frozen backbone's features
  at the weights' input size; those features of every target image are computed once for the whole study
  (and kept in the feature store) and indexed by every shot count and seed. The scratch arm is `run
  --backbone`'s scratch control: the same network from random weights at the data's own size.
- freeze: the cuts are the backbone's stages (models/stages.py: cut n copies the first n). baseB is the
  backbone trained from random weights on the target classes (the scratch control on all target images);
  AnB / AnB+ copy the pretrained weights' first n stages, BnB / BnB+ baseB's. Every arm trains at the data's
  own size, as the scratch control does (at 224 px a CPU would take hours a point). A frozen arm's (AnB,
  BnB) copied stages run once over the target images, in eval mode, and the rest of the network trains on
  their output (AfterCut), as `run`'s transfer phase trains on frozen features: not once a step.

Both reuse split.py's PretrainedBackbone for what a point's network and input transform are; study.py's
Trainer for how a point trains, is recorded and resumes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn

from ..errors import UserError
from ..models import BackboneClassifier
from ..models.stages import stage_pieces
from ..training import freeze
from .feature_pass import frozen_features
from .seeds import derive_seed
from .split import PretrainedBackbone
from .study_plan import Point, Unit, shot_indices
from .study_trainer import Trainer


def refuse_seed_network_options(backbone: str, options: dict) -> None:
    """Options of the seed network that a backbone study would silently ignore."""
    for name, option in (("head", "--head"), ("filters", "--filters")):
        if options.get(name) is not None:
            raise UserError(f"{option}: with --backbone {backbone} the network is the backbone with a new head; "
                            f"{option} is the seed network's option (drop it)")


def prepare_backbone(config, image_shape: tuple[int, int, int], num_classes: int) -> PretrainedBackbone:
    """The backbone and its weights, read now: a grayscale data set or weights that do not fit fail before a
    study folder exists (as `run --backbone`). Drawn from --seed (see PretrainedBackbone): with --weights none
    the source (A) is the same random network whatever ran before (a resumed study copies the same A)."""
    return PretrainedBackbone(config.split, image_shape, num_classes)


class BackboneTrainer(Trainer):
    """A backbone study's points: no baseA; the shots study's transfer arm on features computed once for the
    whole study; the freeze study's copies made stage by stage."""

    scaled = False  # uint8 images: the backbone's InputTransform scales and normalises them per batch

    def __init__(self, config, image_shape, a, b, run, runtime, record, backbone: PretrainedBackbone):
        super().__init__(config, image_shape, a, b, run, runtime, record)
        self.backbone = backbone
        self.features: list[torch.Tensor] | None = None  # the frozen backbone's, of every target image

    def trainings(self, unit: Unit) -> Iterator[None]:
        if self.config.kind == "shots":
            if any(p.arm == "transfer" for p in unit.points):
                self._frozen_features()
            for point in unit.points:
                self._shots_point(point, None)
                yield
            return
        # A's units copy the pretrained weights (no baseA: unit.base is None), B's the baseB trained here.
        base = self.backbone.pretrained
        if unit.base is not None:
            base = self._train(Point("baseB", unit.seed), self.b, True)
            yield
        for point in unit.points:
            self._freeze_point(point, base)
            yield

    def _frozen_features(self) -> None:
        """The frozen backbone's features of every target image, once for the whole study (every shot count
        and seed indexes them), through the feature store: a resumed study reads them back from disk."""
        if self.features is not None:
            return
        with torch.random.fork_rng(devices=[]):
            model, transform = self.backbone.model("transfer")
        runtime = self.runtime
        self.features, record = frozen_features(
            self.config.split.backbone, nn.Sequential(transform, model.features), [self.x_train, self.x_test],
            self.backbone.identity(runtime.precision), transform.crop, runtime)
        # The first pass's record, written at once: a resumed study keeps it (its own pass read the store),
        # so that its study.json is the uninterrupted one's, also when it stopped before its first point.
        if "feature_pass" not in self.run.results:
            self.run.results["feature_pass"] = record
            self.run.save_results()

    def _shots_point(self, point: Point, source: object) -> None:
        keep = shot_indices(self.b.y_train, point.shots, derive_seed(self.config.split.train.seed, repeat=point.seed))
        torch.manual_seed(self._point_seed(point))
        model, transform = self.backbone.model(point.arm)  # run --backbone's transfer phase or scratch control
        if point.arm == "transfer":
            trained, x_train, x_test = model.classifier, self.features[0][keep], self.features[1]
        else:
            trained, x_train, x_test = nn.Sequential(transform.to(self.runtime.device), model), self.x_train[keep], self.x_test
        self._fit(point, model, trained, x_train, torch.from_numpy(self.b.y_train[keep]), x_test)

    def _freeze_point(self, point: Point, copied_from: BackboneClassifier) -> None:
        """A new backbone whose first `cut` stages are copied (frozen, BatchNorm statistics included, unless
        the arm ends in +); the rest and the head from random weights."""
        torch.manual_seed(self._point_seed(point))
        model, transform = self.backbone.model("scratch")
        name = self.config.split.backbone
        pieces, sources = stage_pieces(name, model.features), stage_pieces(name, copied_from.features)
        for (_, piece, _), (_, source, _) in zip(pieces[:point.cut], sources[:point.cut], strict=True):
            piece.load_state_dict(source.state_dict())
            if not point.arm.endswith("+"):
                freeze(piece, eval_mode=True)
        transform.to(self.runtime.device)
        prefix = nn.Sequential(transform, *(piece for _, piece, _ in pieces[:point.cut]))

        def on_frozen_output() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
            """The frozen stages once over every target image (part of the point's time); the rest of the
            network trains on their output."""
            return AfterCut(name, model, point.cut), *self._through(prefix)

        cached = not point.arm.endswith("+") and self._prefix_fits(prefix)
        self._fit(point, model, nn.Sequential(transform, model), self.x_train, torch.from_numpy(self.b.y_train),
                  self.x_test, prepare=on_frozen_output if cached else None)

    def _prefix_fits(self, prefix: nn.Module) -> bool:
        """Whether the frozen stages' output of every target image fits in PREFIX_CACHE_BYTES (and caching
        is on: --no-feature-cache is `run`'s; a study keeps the default)."""
        if not self.config.split.train.feature_cache:
            return False
        with torch.no_grad():
            one = prefix.eval()(self.x_train[:1].to(self.runtime.device))
        return self._fits(math.prod(one.shape[1:]))

    def _train(self, point: Point, split, record: bool) -> BackboneClassifier:
        """baseB: the backbone from random weights trained on every target image (the scratch control's
        network), its weights kept: BnB copies from it, and a resumed study reads it again."""
        torch.manual_seed(self._point_seed(point))
        model, transform = self.backbone.model("scratch")
        self._fit(point, model, nn.Sequential(transform.to(self.runtime.device), model), self.x_train,
                  torch.from_numpy(split.y_train), self.x_test, split, True, record)
        return model.eval()

    def _preprocessing(self) -> dict:
        return self.backbone.preprocessing("scratch").to_dict()


def source_text(split) -> str:
    """The source as `run --backbone` names it: 'efficientnet_lite0 with ImageNet weights'."""
    return (f"{split.backbone} with ImageNet weights" if split.weights == "imagenet"
            else f"{split.backbone} with weights {split.weights}")


class AfterCut(nn.Module):
    """A backbone classifier from stage `cut` on: its remaining stages, what its forward does after the last
    stage (pooling; torchvision's classifier without the replaced Linear), and the head. Fed the output of
    the first `cut` stages, it gives what the whole network gives the images."""

    def __init__(self, backbone: str, model: BackboneClassifier, cut: int):
        super().__init__()
        self.rest = nn.Sequential(*(piece for _, piece, _ in stage_pieces(backbone, model.features)[cut:]))
        self.features, self.classifier = model.features, model.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, f = self.rest(x), self.features
        if hasattr(f, "forward_head"):  # timm: global pool, its dropout, the classifier (replaced: Identity)
            x = f.forward_head(x)
        elif hasattr(f, "layer4"):  # torchvision ResNet: avgpool, flatten, fc (Identity)
            x = torch.flatten(f.avgpool(x), 1)
        else:  # MobileNetV3, EfficientNet-B0: avgpool, flatten, classifier; ConvNeXt's classifier flattens
            x = f.avgpool(x)
            x = f.classifier(x if any(isinstance(m, nn.Flatten) for m in f.classifier.modules())
                             else torch.flatten(x, 1))
        return self.classifier(x)

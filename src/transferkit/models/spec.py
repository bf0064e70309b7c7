"""The JSON description saved beside a model's weights, checked whole before a network is built from it.

A description is input like any file: sizes such as filters 1e9 would ask for terabytes, a resize of 60000
for gigabytes per image. `check_spec` checks every field's type and range; `check_shapes` then compares the
tensors the description implies (a network built on PyTorch's meta device, which allocates nothing) with the
tensors the safetensors file holds, so the real network is never larger than the file on disk.
`check_deployed` checks the description an exported model carries (.onnx metadata, TorchScript extra file)
with the same bounds.

Memory per image is bounded by MAX_SIDE: a file is decoded to at most MAX_RESIZE x MAX_RESIZE (19 MiB in
RGB) and cropped at once to at most MAX_SIDE x MAX_SIDE (12 MiB), whatever a description says.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import torch
from torch import nn

from ..config import TEMPERATURE_RANGE, ModelConfig
from ..errors import UserError
from ..fields import Fields, is_int
from .backbones import BACKBONES, HeadConfig

MAX_UNITS = 1 << 16  # filters, dense or head units, kernel and pool sizes: far above any network made here
MAX_CLASSES = 1 << 20
MAX_SIDE = 2048  # the largest input side (crop, image_size): 8x the 224 px backbones are trained at
MAX_RESIZE = MAX_SIDE * 5 // 4  # the largest decoded side before the crop (the backbones' ratio is 256/224)
RESIZE_KINDS = ("normalize", "scale")  # backbones: cover, crop, normalise; the seed network: stretch, scale


HINT = "this model description is damaged or not transferkit's (use the .json saved with the weights)"
DEPLOYED_HINT = "the model's description is damaged or not transferkit's; give a file written by transferkit export"


def check_spec(spec: object, where: Path) -> dict:
    """`spec` if it describes a network transferkit saves, within sane sizes; else one UserError naming `where`
    and the field."""
    top = Fields(where, spec, HINT)
    architecture = top.choice("architecture", ("seed_cnn", "backbone"))
    num_classes = top.integer("num_classes", 1, MAX_CLASSES)
    top.texts("class_names", length=num_classes)
    if architecture == "seed_cnn":
        _check_seed_cnn(top)
    else:
        top.choice("backbone", BACKBONES)
        head = top.sub("head")
        head.integer("units", 1, MAX_UNITS)
        head.number("dropout", 0.0, 1.0, high_open=True)
        head.only({f.name for f in fields(HeadConfig)})
    _check_preprocessing(top, architecture)
    if "temperature" in top:  # calibration (training/metrics.py); absent: 1
        top.number("temperature", *TEMPERATURE_RANGE)
    return spec


def _check_seed_cnn(top: Fields) -> None:
    config = top.sub("model_config")
    config.only({f.name for f in fields(ModelConfig)})
    given = ModelConfig()  # a setting left out (a description older than it) takes its default, as from_spec does
    sizes = {name: config.integer(name, 1, MAX_UNITS) if name in config else getattr(given, name)
             for name in ("filters", "kernel_size", "pool_size", "dense_units")}
    for name in ("feature_dropout", "classifier_dropout"):
        if name in config:
            config.number(name, 0.0, 1.0, high_open=True)
    top.choice("in_channels", (1, 3))
    h, w = top.integers("image_size", length=2, low=1)
    if max(h, w) > MAX_SIDE:
        top.fail("image_size", f"[height, width] of at most {MAX_SIDE} px each", [h, w])
    k, p = sizes["kernel_size"], sizes["pool_size"]
    if min(h, w) - 2 * (k - 1) < p:
        top.fail("image_size", f"large enough for two {k}x{k} convolutions and a {p}x{p} pool", [h, w])


def _check_preprocessing(top: Fields, architecture: str) -> None:
    pre = top.sub("preprocessing")
    if architecture == "seed_cnn":  # predict takes the input size and channels from the fields checked above
        if "kind" in pre:
            pre.choice("kind", ("scale",))
        return
    pre.choice("kind", ("normalize",))
    resize = pre.integer("resize", 1, MAX_RESIZE)
    pre.integer("crop", 1, min(resize, MAX_SIDE))
    pre.numbers("mean", 3, -1e3, 1e3)
    pre.numbers("std", 3, 1e-6, 1e3)


def check_shapes(build: Callable[[], nn.Module], tensors: dict[str, tuple[int, ...]], spec_file: Path,
                 weights: Path) -> None:
    """The network `build` makes, built on the meta device (no memory), has exactly the tensors of `weights`."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build().state_dict().items()}
    for key in sorted(set(expected) | set(tensors)):
        if expected.get(key) != tensors.get(key):
            said = "absent" if key not in expected else f"of shape {list(expected[key])}"
            held = "absent" if key not in tensors else f"of shape {list(tensors[key])}"
            raise UserError(f"{weights}: does not match {spec_file.name} (tensor {key} is {held} in the weights, "
                            f"{said} in the description); keep the two files of one save together")


def check_deployed(description: object, where: Path, outputs: int | None = None) -> dict:
    """The description an exported model carries (class_names, input, preprocessing), checked as check_spec
    checks a run's: the class names a list of strings, one per output when `outputs` (the graph's output size)
    is known; the input [batch, height, width, channels] within MAX_SIDE; a known resize kind within
    MAX_RESIZE whose crop is the input. Returns {"class_names", "height", "width", "channels", "kind",
    "resize"}; one UserError naming `where` and the field otherwise."""
    top = Fields(where, description, DEPLOYED_HINT)
    names = top.texts("class_names", length=outputs)
    if not 1 <= len(names) <= MAX_CLASSES:
        top.fail("class_names", f"a list of 1 to {MAX_CLASSES} strings", names)
    shape = top.sub("input").get("shape")
    if not (isinstance(shape, list) and len(shape) == 4 and all(is_int(v) and 1 <= v <= MAX_SIDE for v in shape[1:3])
            and shape[3] in (1, 3) and is_int(shape[3])):
        top.fail("input.shape", f"[batch, height, width, channels] with sides of 1 to {MAX_SIDE} px and 1 or 3 "
                                "channels", shape)
    _, height, width, channels = shape
    pre = top.sub("preprocessing")
    kind = pre.choice("kind", RESIZE_KINDS) if "kind" in pre else "scale"  # the seed network's may leave it out
    resize = None
    if kind == "normalize":
        resize = pre.integer("resize", max(height, width), MAX_RESIZE)
        if height != width or channels != 3:
            top.fail("input.shape", "a square RGB crop for a backbone", shape)
    return {"class_names": names, "height": height, "width": width, "channels": channels, "kind": kind,
            "resize": resize}

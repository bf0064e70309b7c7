"""The JSON description saved beside a model's weights, checked whole before a network is built from it.

A description is input like any file: sizes such as filters 1e9 would ask for terabytes, a resize of 60000
for gigabytes per image. `check_spec` checks every field's type and range; `check_shapes` then compares the
tensors the description implies (a network built on PyTorch's meta device, which allocates nothing) with the
tensors the safetensors file holds, so the real network is never larger than the file on disk.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from ..config import TEMPERATURE_RANGE, ModelConfig
from ..errors import UserError
from ..fields import Fields
from .backbones import BACKBONES, HeadConfig

MAX_UNITS = 1 << 16  # filters, dense or head units, kernel and pool sizes: far above any network made here
MAX_CLASSES = 1 << 20
MAX_PIXELS = Image.MAX_IMAGE_PIXELS  # an input size beyond Pillow's own limit (89.5 Mpixels) is no image


HINT = "this model description is damaged or not transferkit's (use the .json saved with the weights)"


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
    if h * w > MAX_PIXELS:
        top.fail("image_size", f"[height, width] of at most {MAX_PIXELS:,} pixels in all", [h, w])
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
    resize = pre.integer("resize", 1, math.isqrt(MAX_PIXELS))
    pre.integer("crop", 1, resize)
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

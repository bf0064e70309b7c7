"""The exported graph: a run's network behind what a deployment has (uint8 images), and what it says about itself."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .classifier import centre_crop

INPUT_NAME, OUTPUT_NAME = "images", "probabilities"


class Deployable(nn.Module):
    """uint8 images (N, H, W, C), as PIL and NumPy hold them, in; class probabilities (N, classes) out.

    The scaling to [0, 1] and the normalisation happen inside, with the same operations as `predict`'s
    preprocessing (`InputTransform`, `scale_images`), so the exported model and PyTorch agree to rounding.
    """

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...], temperature: float = 1.0):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        # The calibration temperature the run fitted (1: none): the graph's probabilities are predict's.
        self.register_buffer("temperature", torch.tensor(temperature, dtype=torch.float32))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() / 255.0
        return torch.softmax(self.model((x - self.mean) / self.std).float() / self.temperature, dim=1)


def deployable(model: nn.Module, spec: dict) -> Deployable:
    """Wrap a model loaded by `load_model` with the normalisation its spec records (none for the seed network),
    for inference only (no gradients: a deployment's outputs need no .detach())."""
    pre = spec["preprocessing"]
    if pre.get("kind") == "normalize":
        mean, std = tuple(pre["mean"]), tuple(pre["std"])
    else:
        mean, std = (0.0,) * spec["in_channels"], (1.0,) * spec["in_channels"]
    return Deployable(model, mean, std, spec.get("temperature", 1.0)).eval().requires_grad_(False)


def input_shape(spec: dict) -> tuple[int, int, int]:
    """(height, width, channels) of one image as the graph takes it."""
    pre = spec["preprocessing"]
    if pre.get("kind") == "normalize":
        return pre["crop"], pre["crop"], 3
    h, w = spec["image_size"]
    return h, w, spec["in_channels"]


def describe(spec: dict) -> dict:
    """What a deployment needs to feed the graph: input, output, class names and the preprocessing before it."""
    pre = spec["preprocessing"]
    h, w, c = input_shape(spec)
    if pre.get("kind") == "normalize":
        resize = (f"scale it, keeping the aspect ratio, to cover {pre['resize']} x {pre['resize']} px and crop the "
                  f"centre (PIL: ImageOps.fit(image, ({pre['resize']}, {pre['resize']}), Image.BILINEAR)), then crop "
                  f"the centre {w} x {h} px")
        inside = f"(pixel / 255 - mean) / std with mean {list(pre['mean'])} and std {list(pre['std'])}"
    else:
        resize = f"resize it to {w} x {h} px, not keeping the aspect ratio (PIL: image.resize(({w}, {h}), Image.BILINEAR))"
        inside = "pixel / 255"
    mode = "RGB" if c == 3 else "L (grayscale)"
    return {
        "class_names": list(spec["class_names"]),
        "input": {"name": INPUT_NAME, "dtype": "uint8", "layout": "NHWC", "shape": ["batch", h, w, c],
                  "mode": mode},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", len(spec["class_names"])],
                   "meaning": "class probabilities (softmax), in class_names order"
                   + (f", calibrated: the logits divided by the temperature {spec['temperature']:g} fitted on "
                      "validation images" if "temperature" in spec else "")},
        "preprocessing": {**pre, "before_the_graph": f"convert to {mode}; {resize}",
                          "inside_the_graph": inside},
    }


def graph_input(decoded: np.ndarray, height: int, width: int) -> np.ndarray:
    """Images as `decode_image` gives them for a model (N, H, W[, C]) -> the graph's input: NHWC, centre-cropped
    to (height, width) with torchvision's CenterCrop arithmetic."""
    return centre_crop(decoded[..., None] if decoded.ndim == 3 else decoded, height, width, rows=1)

"""Predicting classes for image files with a model saved by `run` or `finetune`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.archive import read_regular_file
from ..data.folders import IMAGE_SUFFIXES, decode_image, unreadable_reason
from ..data.preprocess import InputTransform, scale_images
from ..errors import UserError
from ..reporting import load_model
from ..training import images_to_tensor
from .run_folder import model_file


@dataclass(frozen=True)
class Prediction:
    """The top-k (class, probability) pairs for one file, or why it could not be read."""

    path: str
    top: list[tuple[str, float]]
    error: str | None = None

    def to_dict(self) -> dict:
        return {"path": self.path, "error": self.error,
                "predictions": [{"class": c, "probability": round(p, 6)} for c, p in self.top]}


def image_files(inputs: list[str | Path]) -> list[Path]:
    """Files as given, and the image files inside folders (recursively, sorted, hidden ones left out)."""
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                            and not any(part.startswith(".") for part in p.relative_to(item).parts))
        else:
            files.append(item)
    return files


def predict(run_dir: str | Path, inputs: list[str | Path], top_k: int = 3, batch_size: int = 32) -> list[Prediction]:
    """Top-k classes with probabilities for each image; unreadable files get an error and the rest go on."""
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {top_k}")
    model, spec = load_model(model_file(Path(run_dir)))
    names, pre = spec["class_names"], spec["preprocessing"]
    size, channels, prepare = _preparation(spec, pre)
    cover = pre.get("kind") == "normalize"  # backbones were trained on aspect-kept, centre-cropped images
    out: list[Prediction] = []
    pending: list[tuple[str, np.ndarray]] = []

    def flush() -> None:
        if not pending:
            return
        x = images_to_tensor(np.stack([a for _, a in pending]), scale=False)
        with torch.inference_mode():
            probs = torch.softmax(model(prepare(x)).float(), dim=1)
        values, indices = probs.topk(min(top_k, len(names)), dim=1)
        for (path, _), v, i in zip(pending, values.tolist(), indices.tolist()):
            out.append(Prediction(path, [(names[c], p) for c, p in zip(i, v)]))
        pending.clear()

    for path in image_files(inputs):
        try:
            pending.append((str(path), decode_image(read_regular_file(path), size, channels, cover)))
        except Exception as e:  # noqa: BLE001 - any unreadable file is reported and skipped
            flush()
            out.append(Prediction(str(path), [], f"{type(e).__name__}: {unreadable_reason(e)}"))
        if len(pending) >= batch_size:
            flush()
    flush()
    if not out:
        raise UserError("no images given; name image files or folders that hold images")
    return out


def _preparation(spec: dict, pre: dict):
    if pre.get("kind") == "normalize":
        transform = InputTransform(pre["crop"], tuple(pre["mean"]), tuple(pre["std"])).eval()
        return (pre["resize"], pre["resize"]), 3, transform
    h, w = spec["image_size"]
    return (w, h), spec["in_channels"], scale_images

"""Predicting classes for image files with a model saved by `run` or `finetune`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.archive import read_regular_file
from ..data.folders import IMAGE_SUFFIXES, decode_image, naming_the_file, unreadable_reason
from ..data.preprocess import InputTransform, scale_images
from ..errors import UserError
from ..reporting import load_model
from ..training import images_to_tensor
from ..training.tta import mirrored
from .run_folder import model_file

EXPORTED_SUFFIXES = (".onnx", ".pt")  # transferkit export's files: model.onnx, model.torchscript.pt


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
    """Files as given, and the image files inside folders (recursively, sorted, hidden ones left out); a
    folder that holds none stands for itself, so that it is reported (`no_images`), not silently dropped."""
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            inside = sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                            and not any(part.startswith(".") for part in p.relative_to(item).parts))
            files += inside or [item]
        else:
            files.append(item)
    return files


def no_images(folder: Path) -> str:
    """Why a folder named as input gave no image."""
    return f"{folder}: a folder without image files ({', '.join(sorted(IMAGE_SUFFIXES))})"


@dataclass(frozen=True)
class Classifier:
    """What predict needs of a model: its class names, how files are decoded for it, and the probabilities of a
    batch of decoded images, uint8 (N, H, W[, C]) -> (N, classes)."""

    class_names: list[str]
    size: tuple[int, int]  # (width, height) files are decoded to
    crop: tuple[int, int]  # (height, width) of the centre kept at once: an image costs crop, not resize, pixels
    channels: int
    cover: bool  # keep the aspect ratio and crop the centre (backbones), or stretch (the seed network)
    probabilities: Callable[[np.ndarray], np.ndarray]

    def decode(self, data: bytes) -> np.ndarray:
        return centre_crop(decode_image(data, self.size, self.channels, self.cover), *self.crop)


def centre_crop(images: np.ndarray, height: int, width: int, rows: int = 0) -> np.ndarray:
    """The centre (height, width) of an image (H, W[, C]; `rows` 0) or a batch (N, H, W[, C]; `rows` 1), with
    torchvision's CenterCrop arithmetic, as an array of its own (the larger decode is freed)."""
    top = int(round((images.shape[rows] - height) / 2.0))
    left = int(round((images.shape[rows + 1] - width) / 2.0))
    index = (slice(None),) * rows + (slice(top, top + height), slice(left, left + width))
    return np.ascontiguousarray(images[index])


def load_classifier(source: str | Path) -> Classifier:
    """The model of a run folder (in PyTorch), or a file written by `transferkit export` (.onnx in ONNX
    Runtime, .pt in TorchScript)."""
    source = Path(source)
    if source.suffix.lower() in EXPORTED_SUFFIXES and not source.is_dir():
        from ..deploy.formats import exported_classifier

        return exported_classifier(source)
    model, spec = load_model(model_file(source))
    pre = spec["preprocessing"]
    size, crop, channels, prepare = _preparation(spec, pre)
    temperature = spec.get("temperature", 1.0)  # fitted on validation images by finetune: calibrated probabilities

    def probabilities(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits = model(prepare(images_to_tensor(batch, scale=False))).float()
            return torch.softmax(logits / temperature, dim=1).numpy()

    # backbones were trained on aspect-kept, centre-cropped images
    return Classifier(list(spec["class_names"]), size, crop, channels, pre.get("kind") == "normalize", probabilities)


def predict(run_dir: str | Path, inputs: list[str | Path], top_k: int = 3, batch_size: int = 32,
            tta: bool = False) -> list[Prediction]:
    """Top-k classes with probabilities for each image, with the model of a run folder or an exported .onnx
    or TorchScript file; unreadable files (and named folders without images) get an error and the rest go
    on. `tta`: the mean of the probabilities of each image and its mirror image (training/tta.py)."""
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {top_k}")
    classifier = load_classifier(run_dir)
    names = classifier.class_names
    out: list[Prediction] = []
    pending: list[tuple[str, np.ndarray]] = []

    def flush() -> None:
        if not pending:
            return
        batch = np.stack([a for _, a in pending])
        probs = classifier.probabilities(batch)
        if tta:
            probs = (probs + classifier.probabilities(mirrored(batch, 2))) / 2
        order = np.argsort(-probs, axis=1, kind="stable")[:, :min(top_k, len(names))]
        for (path, _), p, i in zip(pending, probs.tolist(), order.tolist()):
            out.append(Prediction(path, [(names[c], p[c]) for c in i]))
        pending.clear()

    for path in image_files(inputs):
        if path.is_dir():
            flush()
            out.append(Prediction(str(path), [], no_images(path)))
            continue
        try:
            with naming_the_file(str(path)):
                pending.append((str(path), classifier.decode(read_regular_file(path))))
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
    """(width, height) to decode to, (height, width) to crop to, channels, and the tensor preparation."""
    if pre.get("kind") == "normalize":
        # Files are cropped as they are decoded (Classifier.decode): the transform's CenterCrop is then a no-op.
        transform = InputTransform(pre["crop"], tuple(pre["mean"]), tuple(pre["std"])).eval()
        return (pre["resize"], pre["resize"]), (pre["crop"], pre["crop"]), 3, transform
    h, w = spec["image_size"]
    return (w, h), (h, w), spec["in_channels"], scale_images

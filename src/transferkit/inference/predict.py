"""Predicting classes for image files with a model saved by `run` or `finetune`, or exported from one.

A run folder's network runs on the feature pass's fast path (feature_pass.fast_forward: BatchNorm folded,
channels-last, inference_mode, bf16 where the CPU has it natively), files are decoded a batch at a time by a
thread per core, and batches are bounded in pixels.
"""

from __future__ import annotations

import importlib.util
import os
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config import (
    ONNX_AUTO_IMAGES,
    PREDICT_ENGINES,
    PREDICT_PRECISIONS,
    PredictOptions,
)
from ..data.archive import read_regular_file
from ..data.folders import IMAGE_SUFFIXES, probe, unreadable_reason
from ..errors import UserError
from ..experiments.feature_pass import fast_forward
from ..experiments.run_folder import model_file
from ..reporting import load_model
from ..training import resolve_precision
from .cache import onnx_classifier_cached
from .classifier import Classifier
from .formats import exported_classifier
from .graph import deployable

EXPORTED_SUFFIXES = (".onnx", ".pt")  # transferkit export's files: model.onnx, model.torchscript.pt
BATCH_PIXELS = 32 * 224 * 224  # pixels in a batch at most: 32 images at 224 px, one at 2048 px


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


def load_classifier(source: str | Path, precision: str = "fp32", engine: str = "pytorch",
                    notice: Callable[[str], None] = print) -> Classifier:
    """The model of a run folder (in PyTorch, on the fast path at `precision`; with `engine` onnxruntime, its
    ONNX export cached in the run folder), or a file written by `transferkit export` (.onnx in ONNX Runtime,
    .pt in TorchScript; fp32 only). `notice` is told when the cache is built."""
    source = Path(source)
    exported = source.suffix.lower() in EXPORTED_SUFFIXES and not source.is_dir()
    if precision == "bf16" and (exported or engine == "onnxruntime"):
        raise UserError(f"--precision bf16: for a run folder in PyTorch; {source} runs in fp32 as exported")
    if exported:
        return exported_classifier(source)
    if engine == "onnxruntime":
        return onnx_classifier_cached(source, notice)
    model, spec = load_model(model_file(source))

    size, crop, channels = _preparation(spec)
    # The exported graph's own wrapper: uint8 NHWC in (channels-last as it comes), normalised and softmaxed
    # at the run's calibration temperature inside.
    forward = fast_forward(deployable(model, spec), resolve_precision(precision))

    def probabilities(batch: np.ndarray) -> np.ndarray:
        return forward(torch.from_numpy(batch[..., None] if batch.ndim == 3 else batch)).numpy()

    # backbones were trained on aspect-kept, centre-cropped images
    return Classifier(list(spec["class_names"]), size, crop, channels,
                      spec["preprocessing"].get("kind") == "normalize", probabilities)


class Predictions(list):
    """predict's list of Prediction, with the pass's speed: images decoded and classified per second."""

    images_per_second: float = 0.0


def predict(run_dir: str | Path, inputs: list[str | Path], top_k: int = PredictOptions.top_k, batch_size: int = 32,
            tta: bool = PredictOptions.tta, precision: str = PredictOptions.precision,
            engine: str = PredictOptions.engine,
            notice: Callable[[str], None] = print) -> Predictions:
    """Top-k classes with probabilities for each image, with the model of a run folder or an exported .onnx
    or TorchScript file; unreadable files (and named folders without images) get an error and the rest go
    on. `tta`: the mean of the probabilities of each image and its mirror image (training/tta.py).
    `precision` (a run folder's): fp32, bf16, or auto (bf16 where the CPU has it natively). `engine` (a run
    folder's): pytorch, onnxruntime (its ONNX export, made once and cached in the run folder; needs the
    export extra), or auto (onnxruntime when installed and ONNX_AUTO_IMAGES images or more are given)."""
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {top_k}")
    if precision not in PREDICT_PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PREDICT_PRECISIONS)}, got {precision!r}")
    if engine not in PREDICT_ENGINES:
        raise UserError(f"--engine must be one of {', '.join(PREDICT_ENGINES)}, got {engine!r}")
    files = image_files(inputs)
    classifier = load_classifier(run_dir, precision, resolve_engine(engine, run_dir, precision, len(files)), notice)
    names = classifier.class_names
    batch_size = max(1, min(batch_size, BATCH_PIXELS // (classifier.crop[0] * classifier.crop[1])))
    out = Predictions()
    pending: list[tuple[str, tuple[np.ndarray, ...]]] = []

    def flush() -> None:
        if not pending:
            return
        probs = batch_probabilities(classifier, [views for _, views in pending], tta)
        for (path, _), top in zip(pending, top_classes(probs, names, top_k), strict=True):
            out.append(Prediction(path, top))
        pending.clear()

    start, large = time.perf_counter(), []
    for path, image, error, pixels in _decoded(classifier, files, batch_size, tta):
        if pixels > Image.MAX_IMAGE_PIXELS:
            large.append((path, pixels))
        if image is None:
            flush()
            out.append(Prediction(str(path), [], error))
            continue
        pending.append((str(path), image))
        if len(pending) >= batch_size:
            flush()
    flush()
    for path, pixels in large:  # Pillow's warning names no file, and comes from a decoding thread
        warnings.warn(f"{path}: Image size ({pixels} pixels) exceeds limit of {Image.MAX_IMAGE_PIXELS} pixels, "
                      "could be decompression bomb DOS attack.", Image.DecompressionBombWarning, stacklevel=2)
    if not out:
        raise UserError("no images given; name image files or folders that hold images")
    done = sum(1 for p in out if not p.error)
    out.images_per_second = done / max(time.perf_counter() - start, 1e-9)
    return out


def batch_probabilities(classifier: Classifier, views: list[tuple[np.ndarray, ...]], tta: bool) -> np.ndarray:
    """The probabilities of a batch of decoded images (each image's views from Classifier.decode_views): with
    `tta`, the mean over each image and its mirror image. predict's and serve's one path to the model."""
    probs = classifier.probabilities(np.stack([v[0] for v in views]))
    if tta:
        probs = (probs + classifier.probabilities(np.stack([v[1] for v in views]))) / 2
    return probs


def top_classes(probs: np.ndarray, names: list[str], top_k: int) -> list[list[tuple[str, float]]]:
    """The top_k (class, probability) pairs of each row of probabilities, most probable first (ties in class
    order)."""
    order = np.argsort(-probs, axis=1, kind="stable")[:, :min(top_k, len(names))]
    return [[(names[c], p[c]) for c in i] for p, i in zip(probs.tolist(), order.tolist(), strict=True)]


def resolve_engine(engine: str, source: str | Path, precision: str, images: int) -> str:
    """The engine `auto` stands for: ONNX Runtime for a run folder's model when it is installed and enough
    images are given to repay its one-time export (ONNX_AUTO_IMAGES), else PyTorch."""
    if engine != "auto":
        return engine
    if precision == "bf16" or images < ONNX_AUTO_IMAGES or not Path(source).is_dir():
        return "pytorch"
    return "onnxruntime" if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnxscript") \
        else "pytorch"


def _decoded(classifier: Classifier, files: list[Path], batch: int,
             mirror: bool) -> Iterator[tuple[Path, tuple[np.ndarray, ...] | None, str | None, int]]:
    """(path, views for the model (with `mirror`, the mirror image too) or None, why not, pixels in the file) for
    each file in order, read and
    decoded `batch` files at a time by a thread per core (Pillow decodes without the GIL). Not while the
    network runs: its threads wait for each other, and one held up by a decoding thread holds up all."""
    with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # given by predict, naming the files
        for start in range(0, len(files), batch):
            chunk = files[start:start + batch]
            for path, result in zip(chunk, pool.map(lambda path: _decode_file(classifier, path, mirror), chunk), strict=True):
                yield (path, *result)


def _decode_file(classifier: Classifier, path: Path,
                 mirror: bool) -> tuple[tuple[np.ndarray, ...] | None, str | None, int]:
    if path.is_dir():
        return None, no_images(path), 0
    pixels = 0
    try:
        data = read_regular_file(path)
        (w, h), _ = probe(data)
        pixels = w * h
        return classifier.decode_views(data, mirror), None, pixels
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported and skipped
        return None, f"{type(e).__name__}: {unreadable_reason(e)}", pixels


def _preparation(spec: dict) -> tuple[tuple[int, int], tuple[int, int], int]:
    """(width, height) to decode to, (height, width) to crop to, and channels."""
    pre = spec["preprocessing"]
    if pre.get("kind") == "normalize":
        return (pre["resize"], pre["resize"]), (pre["crop"], pre["crop"]), 3
    h, w = spec["image_size"]
    return (w, h), (h, w), spec["in_channels"]

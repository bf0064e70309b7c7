"""`predict --engine onnxruntime` on a run folder: the run's model exported to ONNX once, kept in the run
folder (cache/<model>.onnx) and used while it is the export of these very weights.

A cache is input like any file: it is used only when its recorded key (a digest of the weights, their
description, and the versions that exported them) is this run's, and when it passes the checks of any
exported file (formats.exported_classifier); anything else (stale, damaged, another model's) is rebuilt.
A new build is checked against PyTorch on random images before it is written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..atomic import write_atomic
from ..errors import UserError
from ..experiments.run_folder import model_file
from ..reporting import load_model
from .formats import OPSET, TOLERANCE, exported_classifier, onnx_bytes, onnx_runner, require_onnx
from .graph import deployable, describe, input_shape

KEY = "transferkit_predict_cache"  # the metadata entry that says which weights a cache was exported from


def onnx_classifier_cached(run_dir: Path, notice: Callable[[str], None]):
    """predict's Classifier for a run folder, in ONNX Runtime, through the run's cached ONNX file."""
    require_onnx()
    weights = model_file(run_dir)
    key = _key(weights)
    path = Path(run_dir) / "cache" / f"{weights.stem}.onnx"
    if path.is_file():
        try:
            if _recorded_key(path) == key:
                return exported_classifier(path)
        except UserError:
            pass
        notice(f"{path}: not the export of these weights (stale or damaged); rebuilding it")
    notice(f"exporting the model to ONNX once for predict --engine onnxruntime (kept in {path}) ...")
    data = _build(weights, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: tmp.write_bytes(data))
    return exported_classifier(path)


def _key(weights: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for part in (weights.read_bytes(), weights.with_suffix(".json").read_bytes(),
                 f"{__version__}|{torch.__version__}|{OPSET}".encode()):
        digest.update(part)
    return digest.hexdigest()


def _recorded_key(path: Path) -> str | None:
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - protobuf raises its own types for any damaged file
        return None
    return next((p.value for p in proto.metadata_props if p.key == KEY), None)


def _build(weights: Path, key: str) -> bytes:
    """The ONNX bytes of the run's model, checked against PyTorch on random images (as export checks)."""
    model, spec = load_model(weights)
    height, width, channels = input_shape(spec)
    graph = deployable(model, spec)
    data = onnx_bytes(graph, torch.zeros((2, height, width, channels), dtype=torch.uint8), {**describe(spec), KEY: key})
    images = np.random.default_rng(0).integers(0, 256, (2, height, width, channels), dtype=np.uint8)
    with torch.inference_mode():
        expected = graph(torch.from_numpy(images)).numpy()
    worst = float(np.abs(onnx_runner(data)(images) - expected).max())
    if not worst <= TOLERANCE:
        raise UserError(f"{weights}: its ONNX export differs from PyTorch by {worst:.2e} (more than {TOLERANCE:g}); "
                        "predict with --engine pytorch")
    return data

"""ONNX and TorchScript: writing a Deployable graph to bytes with its description, and running such bytes."""

from __future__ import annotations

import importlib
import io
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..jsonfile import parse_json, strict_json
from .graph import INPUT_NAME, OUTPUT_NAME, Deployable, graph_input

OPSET = 20
EXTRA_FILE = "transferkit.json"  # TorchScript: the description, read back with torch.jit.load(_extra_files=...)
INSTALL = 'pip install "transferkit[export]" (from a clone: pip install -c constraints.txt ".[export]")'
Runner = Callable[[np.ndarray], np.ndarray]  # the graph's uint8 input -> probabilities


def require_onnx(*modules: str) -> None:
    """Import the optional ONNX packages now, or say which pip command installs them."""
    for name in modules or ("onnx", "onnxscript", "onnxruntime"):
        try:
            importlib.import_module(name)
        except ImportError:
            raise UserError(f"--format onnx needs the optional package {name}, which is not installed: {INSTALL}") from None


def onnx_bytes(graph: Deployable, example: torch.Tensor, description: dict) -> bytes:
    """The graph as an ONNX model (opset OPSET, dynamic batch), its description in metadata_props.

    torch.onnx.export's default exporter in torch 2.14 is the dynamo one (torch.export, then onnxscript); it
    gives the eager probabilities to about 1e-7 on every transferkit backbone, so it is the one used.
    """
    import onnx

    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():  # the exporter's own deprecation notices are nothing a user can act on
        warnings.simplefilter("ignore")
        program = torch.onnx.export(graph, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    opset_version=OPSET, dynamo=True, dynamic_shapes=({0: batch},),
                                    external_data=False, verbose=False)
    proto = program.model_proto
    for key, value in description.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else strict_json(value, what=key, indent=None)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def torchscript_bytes(graph: Deployable, example: torch.Tensor, description: dict) -> bytes:
    """The graph traced to TorchScript (exact for these feed-forward networks: no branch depends on the data;
    the batch size stays free), its description as the extra file EXTRA_FILE."""
    with warnings.catch_warnings():  # torch.jit.trace warns that it is deprecated; it is what jit.load reads
        warnings.simplefilter("ignore")
        with torch.no_grad():
            traced = torch.jit.trace(graph, (example,), check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files={EXTRA_FILE: strict_json(description, what=EXTRA_FILE, indent=None)})
    return buffer.getvalue()


def onnx_runner(model: bytes | Path) -> Runner:
    """ONNX Runtime on the CPU, for a model's bytes or file."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its notices about unused initialisers are not the user's
    source = model if isinstance(model, bytes) else str(model)
    session = onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def torchscript_runner(model: bytes | Path) -> Runner:
    """torch.jit.load, for a model's bytes or file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(io.BytesIO(model) if isinstance(model, bytes) else str(model), map_location="cpu")

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()

    return run


def onnx_description(path: Path) -> dict:
    """The description an exported .onnx file carries (class names, input, preprocessing)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf raises its own types for any damaged file
        raise UserError(f"{path}: not an ONNX model ({type(e).__name__}); give a file written by transferkit export") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    if not {"class_names", "input", "preprocessing"} <= set(meta):
        raise UserError(f"{path}: an ONNX model without transferkit's metadata (class names, input, preprocessing); "
                        "give a file written by transferkit export")
    return {k: parse_json(meta[k]) for k in ("class_names", "input", "preprocessing")}


def onnx_classifier(path: Path):
    """An exported .onnx file as predict's Classifier: decoded as its metadata says, run in ONNX Runtime."""
    from ..experiments.predict import Classifier

    if not path.is_file():
        raise UserError(f"{path}: no such file; give a run folder or an .onnx file written by transferkit export")
    require_onnx("onnx", "onnxruntime")
    description = onnx_description(path)
    _, h, w, c = description["input"]["shape"]
    pre = description["preprocessing"]
    cover = pre.get("kind") == "normalize"
    size = (pre["resize"], pre["resize"]) if cover else (w, h)
    run = onnx_runner(path)
    return Classifier(description["class_names"], size, c, cover, lambda decoded: run(graph_input(decoded, h, w)))

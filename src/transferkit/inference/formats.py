"""ONNX and TorchScript: writing a Deployable graph to bytes with its description, and running such bytes."""

from __future__ import annotations

import importlib
import io
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError, first_line
from ..jsonfile import parse_json, read_json, strict_json
from ..models.spec import DEPLOYED_HINT, check_deployed
from .classifier import Classifier
from .graph import INPUT_NAME, OUTPUT_NAME, Deployable, graph_input

TOLERANCE = 1e-4  # the largest difference of a probability allowed between an export and PyTorch, in fp32
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
    session = _onnx_session(model if isinstance(model, bytes) else str(model))
    return lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def _onnx_session(source: bytes | str):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its notices about unused initialisers are not the user's
    return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])


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
    """The description an exported .onnx file carries (class names, input, preprocessing), parsed, not checked."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf raises its own types for any damaged file
        raise UserError(f"{path}: not an ONNX model ({type(e).__name__}); give a file written by transferkit export") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    if not {"class_names", "input", "preprocessing"} <= set(meta):
        raise UserError(f"{path}: an ONNX model without transferkit's metadata (class names, input, preprocessing); "
                        "give a file written by transferkit export")
    described = {}
    for key in ("class_names", "input", "preprocessing"):
        try:
            described[key] = parse_json(meta[key])
        except ValueError as e:
            raise UserError(f"{path}: its metadata {key} is not JSON ({first_line(e)[:80]}); {DEPLOYED_HINT}") from None
    return described


def exported_classifier(path: Path):
    """A file written by `transferkit export` as predict's Classifier, its description checked as a run's is
    (check_deployed): .onnx in ONNX Runtime, .pt in TorchScript (its description inside, or in its sidecar)."""
    if not path.is_file():
        raise UserError(f"{path}: no such file; give a run folder or a file written by transferkit export "
                        "(.onnx or .torchscript.pt)")
    if path.suffix.lower() == ".onnx":
        run, described = _onnx_model(path)
    else:
        run, described = _torchscript_model(path)
    h, w, c = described["height"], described["width"], described["channels"]
    cover = described["kind"] == "normalize"
    size = (described["resize"],) * 2 if cover else (w, h)
    run = _reported(run, path, len(described["class_names"]))
    return Classifier(described["class_names"], size, (h, w), c, cover, lambda decoded: run(graph_input(decoded, h, w)))


def _onnx_model(path: Path) -> tuple[Runner, dict]:
    """An .onnx file's session and checked description: class names one per output, input as its graph's."""
    require_onnx("onnx", "onnxruntime")
    description = onnx_description(path)
    try:
        session = _onnx_session(str(path))
    except Exception as e:  # noqa: BLE001 - ONNX Runtime's own exception types, for a graph it cannot load
        raise UserError(f"{path}: ONNX Runtime cannot load it ({first_line(e)[:160]}); {DEPLOYED_HINT}") from None
    graph_in, graph_out = session.get_inputs()[0], session.get_outputs()[0]
    outputs = graph_out.shape[1] if len(graph_out.shape) == 2 and isinstance(graph_out.shape[1], int) else None
    described = check_deployed(description, path, outputs)
    said = [described["height"], described["width"], described["channels"]]
    if graph_in.type != "tensor(uint8)" or len(graph_in.shape) != 4 or list(graph_in.shape[1:]) != said:
        raise UserError(f"{path}: its graph takes {graph_in.type} of shape {graph_in.shape}, its description "
                        f"uint8 [batch, {', '.join(map(str, said))}]; {DEPLOYED_HINT}")
    return (lambda x: session.run([graph_out.name], {graph_in.name: x})[0]), described


def _torchscript_model(path: Path) -> tuple[Runner, dict]:
    """A TorchScript file and its checked description (the extra file EXTRA_FILE, else the sidecar .json)."""
    extra = {EXTRA_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError and others for a damaged file
        raise UserError(f"{path}: not a TorchScript model ({first_line(e)[:120]}); {DEPLOYED_HINT}") from None
    sidecar = path.with_name(path.name + ".json")
    try:
        description = parse_json(extra[EXTRA_FILE]) if extra[EXTRA_FILE] else read_json(sidecar)
    except (OSError, ValueError) as e:
        where = "its description" if extra[EXTRA_FILE] else f"its sidecar {sidecar.name}"
        raise UserError(f"{path}: {where} cannot be read ({first_line(e)[:80]}); {DEPLOYED_HINT}") from None

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()

    return run, check_deployed(description, path)


def _reported(run: Runner, path: Path, classes: int) -> Runner:
    """`run` whose failures (a graph that does not take what its description says) are one line naming the
    file, and whose output is checked to be (batch, classes) probabilities."""
    def checked(x: np.ndarray) -> np.ndarray:
        try:
            probs = np.asarray(run(x))
        except Exception as e:  # noqa: BLE001 - ONNX Runtime's and TorchScript's own exception types
            raise UserError(f"{path}: the model fails on a batch of shape {list(x.shape)} "
                            f"({type(e).__name__}: {first_line(e)[:160]}); {DEPLOYED_HINT}") from None
        if probs.shape != (len(x), classes) or not np.isfinite(probs).all():
            raise UserError(f"{path}: the model gave {probs.dtype} outputs of shape {list(probs.shape)}, not finite "
                            f"probabilities of shape [{len(x)}, {classes}]; {DEPLOYED_HINT}")
        return probs

    return checked

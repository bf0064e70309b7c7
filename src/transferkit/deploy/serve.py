"""`transferkit serve RUN_DIR | MODEL.onnx | MODEL.torchscript.pt`: the model loaded once, as predict loads it,
behind HTTP on loopback unless told otherwise (app.py: the endpoints; server.py: uvicorn, signals)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..config import ServeConfig
from ..errors import UserError
from ..inference import load_classifier
from .app import Served, create_app
from .metadata import model_metadata
from .server import bind, is_loopback, serve_forever, url

INSTALL = 'pip install "transferkit[serve]" (from a clone: pip install -c constraints.txt ".[serve]")'
SERVE_MODULES = ("fastapi", "uvicorn", "multipart")  # multipart: python-multipart, for uploaded files


def require_serve() -> None:
    """Find the serve extra's packages now, or say which pip command installs them."""
    for name in SERVE_MODULES:
        if importlib.util.find_spec(name) is None:
            raise UserError(f"transferkit serve needs the optional package {name}, which is not installed: {INSTALL}")


def serve_engine(source: Path, config: ServeConfig) -> str:
    """What runs a run folder's network: --engine as given; auto is ONNX Runtime where the export extra is
    installed (a server sees enough images to repay the one-time export) and bf16 was not asked, else PyTorch.
    An exported file runs as it was exported (.onnx: ONNX Runtime, .pt: TorchScript)."""
    if not source.is_dir():
        return "onnxruntime" if source.suffix.lower() == ".onnx" else "torchscript"
    if config.engine != "auto":
        return config.engine
    installed = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))
    return "onnxruntime" if installed and config.precision != "bf16" else "pytorch"


def load_served(source: str | Path, config: ServeConfig | None = None,
                notice: Callable[[str], None] = print) -> Served:
    """The model of a run folder or an exported file, loaded once as `transferkit predict` loads it (the same
    Classifier, so the same probabilities), with what /metadata says about it."""
    source, config = Path(source), config or ServeConfig()
    if not source.exists():
        raise UserError(f"{source}: no such run folder or file; give a run folder or a file written by "
                        "transferkit export (.onnx or .torchscript.pt)")
    engine = serve_engine(source, config)
    classifier = load_classifier(source, config.precision, engine if source.is_dir() else "pytorch", notice)
    # One forward pass now, in this thread: the PyTorch fast path folds its BatchNorm on its first batch, which
    # must not happen in two model threads at once, and the first request should not pay for the kernels.
    shape = (1, *classifier.crop) + ((classifier.channels,) if classifier.channels > 1 else ())
    classifier.probabilities(np.zeros(shape, dtype=np.uint8))
    metadata = {**model_metadata(source), "engine": engine,
                "precision": config.precision if engine == "pytorch" else "fp32"}
    return Served(source, classifier, metadata, config, engine)


def serve(source: str | Path, config: ServeConfig | None = None, notice: Callable[[str], None] = print) -> None:
    """Serve the model of `source` until SIGTERM or Ctrl-C, which finish the requests in flight first."""
    require_serve()
    config = config or ServeConfig()
    sock = bind(config.host, config.port)  # before the model loads: a port in use fails at once
    try:
        served = load_served(source, config, notice)
        app = create_app(served)
        names = served.classifier.class_names
        notice(f"serving {source} ({len(names)} classes, {served.engine}, batches of up to {served.max_batch} "
               f"images, waiting up to {config.max_wait_ms:g} ms) on {url(sock)}")
        if is_loopback(config.host):
            notice("listening on loopback only: this machine alone can reach it (--host 0.0.0.0 for others)")
        else:
            notice(f"listening on {config.host}: any machine that reaches it can send images; there is no "
                   "authentication, so put it behind a proxy that has some")
        notice(f"the page: {url(sock)}/   an image: curl -F file=@photo.jpg {url(sock)}/predict   "
               "stop: Ctrl-C")
        serve_forever(app, sock, config.timeout_s)
    finally:
        sock.close()
    notice("stopped")

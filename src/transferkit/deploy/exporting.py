"""`transferkit export`: a run's model to ONNX or TorchScript, checked against PyTorch before it is written."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .. import __version__
from ..atomic import cannot_write, write_atomic_files
from ..errors import UserError
from ..experiments.run_folder import model_file
from ..inference import load_classifier
from ..inference.formats import (
    OPSET,
    TOLERANCE,
    onnx_bytes,
    onnx_runner,
    require_onnx,
    torchscript_bytes,
    torchscript_runner,
)
from ..inference.graph import deployable, describe, input_shape
from ..jsonfile import strict_json
from ..reporting import load_model, read_results, read_status
from .check import CheckResult, compare, given_images, run_images

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}


@dataclass(frozen=True)
class ExportResult:
    """The exported file, its JSON sidecar (description and check) and how the check went."""

    path: Path
    sidecar: Path
    format: str
    check: CheckResult

    def summary(self) -> str:
        return f"{self.path} ({self.format}): checked against PyTorch on {self.check.summary()}"


def export(run_dir: str | Path, format: str = "onnx", *, out: str | Path | None = None, force: bool = False,
           check: list[str | Path] | None = None, tolerance: float = TOLERANCE) -> ExportResult:
    """Export the model of a finished `run` or `finetune` folder (default file: RUN_DIR/export/<model>.onnx or
    .torchscript.pt), after checking it against PyTorch on the run's validation images or on `check`."""
    run_dir = Path(run_dir)
    if format not in FORMATS:
        raise UserError(f"--format {format}: unknown; choose one of {', '.join(FORMATS)}")
    weights = model_file(run_dir)
    status = (read_status(run_dir) or {}).get("status", "complete")  # runs from before status.json were complete
    if status != "complete":
        raise UserError(f"{run_dir}: the run is not finished (status.json says {status}); resume it with --resume, "
                        "or export a complete run")
    if format == "onnx":
        require_onnx()
    name = weights.stem + SUFFIXES[format]
    out, sidecar = _outputs(Path(out) if out is not None else run_dir / "export" / name, out, name)
    if (out.exists() or sidecar.exists()) and not force:
        raise UserError(f"{out if out.exists() else sidecar}: exists; give another --out, or --force to replace it")
    origin, images = given_images(check) if check else run_images(run_dir, read_results(run_dir))

    model, spec = load_model(weights)
    height, width, channels = input_shape(spec)
    example = torch.zeros((2, height, width, channels), dtype=torch.uint8)  # batch 2: a batch size, not a constant
    description = {**describe(spec), "format": format, **({"opset": OPSET} if format == "onnx" else {}),
                   "source": {"run": str(run_dir), "weights": weights.relative_to(run_dir).as_posix(),
                              "architecture": spec["architecture"], "backbone": spec.get("backbone")},
                   "versions": {"transferkit": __version__, "torch": torch.__version__}}
    if format == "onnx":
        data = onnx_bytes(deployable(model, spec), example, description)
        runner = onnx_runner(data)
    else:
        data = torchscript_bytes(deployable(model, spec), example, description)
        runner = torchscript_runner(data)
    result = compare(load_classifier(run_dir), runner, images, origin, height, width, tolerance)
    if result.checked == 0:
        raise UserError(f"{out}: not written, {result.summary()}")
    if not result.passed:
        raise UserError(f"{out}: not written, the exported model does not match PyTorch on {result.summary()}")

    text = strict_json({**description, "file": out.name, "check": result.to_dict()}, what=str(sidecar)) + "\n"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(cannot_write(out.parent, e, existed=False)) from None
    # Both files or neither: a model without its sidecar (or beside another model's) would be a half export.
    write_atomic_files({out: lambda tmp: tmp.write_bytes(data),
                        sidecar: lambda tmp: tmp.write_text(text, encoding="utf-8")})
    return ExportResult(out, sidecar, format, result)


def _outputs(out: Path, given: str | Path | None, name: str) -> tuple[Path, Path]:
    """The model file and its sidecar, refused before any work where they cannot be files: --out '', a folder,
    a path below a file."""
    if given is not None and not str(given).strip():
        raise UserError(f"--out {str(given)!r}: empty; give the file to write, such as export/{name}")
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; give the file to write, such as {out / name}")
    below = next((parent for parent in out.parents if parent.exists() and not parent.is_dir()), None)
    if below is not None:
        raise UserError(f"--out {out}: {below} is a file, not a folder; give a path in a folder")
    sidecar = out.with_name(out.name + ".json")
    if sidecar.is_dir():
        raise UserError(f"--out {out}: its sidecar {sidecar} is a folder; remove it or give another --out")
    return out, sidecar

"""`transferkit export`: a run's model to ONNX or TorchScript, checked against PyTorch before it is written."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import __version__
from ..atomic import cannot_write, write_atomic_files
from ..command_options import ExportOptions
from ..config import EXPORT_FORMATS
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
from .check import CheckResult, compare, given_images, labelled_run_images, run_images
from .quantize import CALIBRATION_IMAGES, COMPARE_LIMIT, MAX_DROP, Int8Result, int8_export

FORMATS = EXPORT_FORMATS
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "int8": ".int8.onnx"}


@dataclass(frozen=True)
class ExportResult:
    """The exported file, its JSON sidecar (description and check) and how the check went."""

    path: Path
    sidecar: Path
    format: str
    check: CheckResult
    int8: Int8Result | None = None  # with --int8: how the int8 model compared with fp32

    def summary(self) -> str:
        return f"{self.path} ({self.format}): checked against PyTorch on {self.check.summary()}"


def export(run_dir: str | Path, format: str = ExportOptions.format, *, out: str | Path | None = ExportOptions.out,
           force: bool = ExportOptions.force, check: list[str | Path] | None = ExportOptions.check,
           tolerance: float = TOLERANCE, int8: bool = ExportOptions.int8, max_drop: float = ExportOptions.max_drop,
           calibration_images: int = ExportOptions.calibration_images,
           calibrate: list[str | Path] | None = ExportOptions.calibrate) -> ExportResult:
    """Export the model of a finished `run` or `finetune` folder (default file: RUN_DIR/export/<model>.onnx or
    .torchscript.pt), after checking it against PyTorch on the run's validation images or on `check`.

    `int8` (ONNX; default file <model>.int8.onnx): quantized by ONNX Runtime, calibrated on
    `calibration_images` of the run's training images (or on `calibrate`), and written only if its accuracy
    on the run's held-out images is at most `max_drop` points below the fp32 model's."""
    run_dir = Path(run_dir)
    if format not in FORMATS:
        raise UserError(f"--format {format}: unknown; choose one of {', '.join(FORMATS)}")
    _int8_options(format, int8, max_drop, calibration_images, calibrate)
    weights = model_file(run_dir)
    status = (read_status(run_dir) or {}).get("status", "complete")  # runs from before status.json were complete
    if status != "complete":
        raise UserError(f"{run_dir}: the run is not finished (status.json says {status}); resume it with --resume, "
                        "or export a complete run")
    if format == "onnx":
        require_onnx()
    name = weights.stem + SUFFIXES["int8" if int8 else format]
    out, sidecar = _outputs(Path(out) if out is not None else run_dir / "export" / name, out, name)
    if (out.exists() or sidecar.exists()) and not force:
        raise UserError(f"{out if out.exists() else sidecar}: exists; give another --out, or --force to replace it")
    origin, images = given_images(check) if check else run_images(run_dir, read_results(run_dir))
    if int8:  # found (or refused) before any work
        gone = "--int8 compares int8 with fp32 on them: put them back, or export without --int8"
        held = labelled_run_images(run_dir, read_results(run_dir), COMPARE_LIMIT, instead=gone)
        calibration = ((*given_images(calibrate, calibration_images, "--calibrate"), None) if calibrate else
                       labelled_run_images(run_dir, read_results(run_dir), calibration_images, training=True,
                                           instead="give images to calibrate on with --calibrate IMAGES"))

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
    reference = load_classifier(run_dir)
    result = compare(reference, runner, images, origin, height, width, tolerance)
    if result.checked == 0:
        raise UserError(f"{out}: not written, {result.summary()}")
    if not result.passed:
        raise UserError(f"{out}: not written, the exported model does not match PyTorch on {result.summary()}")
    quantized = None
    if int8:
        data, quantized = int8_export(data, reference, height, width, calibration, held, max_drop)
        if not quantized.passed:
            raise UserError(f"{out}: not written, {quantized.summary()}; calibrate on more of the run's training "
                            "images (--calibration-images), allow more (--max-drop), or keep the fp32 export "
                            "(without --int8)")
        description = {**description, "precision": "int8", "quantization": quantized.quantization}

    extra = {"int8": quantized.to_dict()} if quantized else {}
    text = strict_json({**description, "file": out.name, "check": result.to_dict(), **extra}, what=str(sidecar)) + "\n"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(cannot_write(out.parent, e, existed=False)) from None
    # Both files or neither: a model without its sidecar (or beside another model's) would be a half export.
    write_atomic_files({out: lambda tmp: tmp.write_bytes(data),
                        sidecar: lambda tmp: tmp.write_text(text, encoding="utf-8")})
    return ExportResult(out, sidecar, format, result, quantized)


def _int8_options(format: str, int8: bool, max_drop: float, calibration_images: int,
                  calibrate: list[str | Path] | None) -> None:
    """--int8 and its options, refused in one line before any work when they cannot be."""
    if not int8:
        if calibrate:
            raise UserError("--calibrate: only with --int8 (the images the int8 model is calibrated on)")
        return
    if format != "onnx":
        raise UserError(f"--int8: for --format onnx (ONNX Runtime's quantization), not {format}")
    if not (isinstance(max_drop, (int, float)) and math.isfinite(max_drop) and max_drop >= 0):
        raise UserError(f"--max-drop {max_drop}: give accuracy points int8 may lose, 0 or more (default {MAX_DROP:g})")
    if not (isinstance(calibration_images, int) and calibration_images >= 1):
        raise UserError(f"--calibration-images {calibration_images}: give 1 or more (default {CALIBRATION_IMAGES})")


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

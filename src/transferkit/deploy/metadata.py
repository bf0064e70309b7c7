"""What a served model says about itself (`GET /metadata`): its classes, input and preprocessing, the run it
came from, that run's validation accuracy and calibration."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..experiments.run_folder import model_file
from ..inference.formats import onnx_description
from ..inference.graph import describe
from ..jsonfile import read_json
from ..reporting import read_results
from ..reporting.results import held_out_key


def model_metadata(source: Path) -> dict:
    """The description of a run folder's model (as `transferkit export` writes it in its sidecar), or of an
    exported file (its sidecar, else what the file carries), with the run it came from where that is here."""
    if source.is_dir():
        weights = model_file(source)
        described = {**describe(read_json(weights.with_suffix(".json"))), "source": {
            "run": str(source), "weights": weights.relative_to(source).as_posix()}}
        run_dir: Path | None = source
    else:
        sidecar = source.with_name(source.name + ".json")
        described = _readable(sidecar) or (onnx_description(source) if source.suffix.lower() == ".onnx" else {})
        run = (described.get("source") or {}).get("run") if isinstance(described.get("source"), dict) else None
        run_dir = Path(run) if isinstance(run, str) and Path(run).is_dir() else None
    keep = ("class_names", "input", "output", "preprocessing", "source", "format", "check", "versions")
    out = {key: described[key] for key in keep if key in described}
    out["run"] = _run_summary(run_dir, out.get("source", {}).get("weights")) if run_dir is not None else None
    return out


def _readable(path: Path) -> dict | None:
    try:
        value = read_json(path)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _run_summary(run_dir: Path, weights: str | None) -> dict | None:
    """The run's experiment, when it was made, the validation metrics of the phase whose weights are served,
    and its calibration; None where the folder cannot be read (the model is served all the same)."""
    try:
        results = read_results(run_dir)
    except UserError:
        return None
    phases = results.get("phases") or {}
    stem = Path(weights).stem if weights else None
    name = stem if stem in phases else (list(phases)[-1] if phases else None)
    validation = None
    if name is not None:
        phase = phases[name]
        metrics = phase.get("metrics") or {}
        validation = {"phase": name, "split": phase.get("validated_on"), "images": phase.get(held_out_key(phase, "samples")),
                      "accuracy": phase.get(held_out_key(phase, "accuracy")), "balanced_accuracy": metrics.get("balanced_accuracy"),
                      "macro_f1": metrics.get("macro_f1")}
    config = results.get("config") or {}
    return {"folder": str(run_dir), "experiment": results.get("experiment"), "created": results.get("created"),
            "backbone": config.get("backbone"), "validation": validation, "calibration": results.get("calibration")}

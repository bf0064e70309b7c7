"""report.html: a run folder told as an article, built from the folder's files alone.

Everything comes from results.json, status.json and the PNGs beside them, so `transferkit report` rebuilds the
page for any run, also one made before a section existed: what a run did not record is left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..models import LayerRow
from ..training.metrics import IMBALANCE_RATIO, class_metrics
from .console import describe_stopping
from .figures import PHASE_COLORS, confusion_figure, overlay_curves_figure, reliability_figure, time_figure
from .html import Image, figure_image, png_image, render, write_html
from .results import (
    RESULTS_FILE,
    Gain,
    baseline_verdicts,
    dotted,
    held_out,
    read_results,
    results_file,
    transfer_gain,
)
from .status import read_status

REPORT_FILE = "report.html"

# One line per phase for a reader who has not seen the console, by experiment.
ROLES = {
    "source": "a new network, every layer trained on the source classes",
    "transfer": "the source network with its convolutional features frozen; only the classifier trains, "
                "on the target classes",
    "scratch": "the control: the same network, new, every layer trained on the target classes for as many epochs",
    "frozen": "the pretrained backbone frozen; a new head trains on its features",
    "unfrozen": "the whole network trains, the backbone at a smaller learning rate",
}
# The split experiment on a pretrained backbone (--backbone): the pretraining is the source.
BACKBONE_ROLES = {
    "transfer": "the pretrained backbone frozen at its weights' input size; a new head trains on its features, "
                "on the target classes",
    "scratch": "the control: the same network from random weights, every layer trained on the target classes at "
               "the images' own size",
}


@dataclass(frozen=True)
class PhaseView:
    name: str
    role: str
    color: str
    classes: list[str]
    accuracy: float
    loss: float
    seconds: float
    epochs: int
    train_samples: int
    held_out_samples: int  # the images its accuracy was measured on (`split`)
    params: dict
    layers: list[LayerRow] | None
    confusion: Image | None
    metrics: dict | None = None  # per-class precision, recall, F1; balanced accuracy, macro-F1
    class_weights: str | None = None  # the training loss's weights, as the console said them
    calibration: dict | None = None
    reliability: Image | None = None
    stopping: str | None = None  # how long it trained and which epoch it kept, in words (None: older runs)
    split: str = "validation"  # what its accuracy was measured on: a validation split, or a test split

    @property
    def headline(self) -> tuple[str, float]:
        """The card's number: balanced accuracy where the classes measured on are imbalanced (the largest more
        than twice the smallest: accuracy would be carried by the large ones), else accuracy."""
        if self.metrics is not None and self.metrics["imbalanced"]:
            return "balanced_accuracy", self.metrics["balanced_accuracy"]
        return "accuracy", self.accuracy


@dataclass(frozen=True)
class ReportView:
    title: str
    intro: str
    experiment: str
    dataset: str
    origin: str
    created: str
    status: dict | None
    phases: list[PhaseView]
    gain: Gain | None
    curves: list[Image]
    time_bars: Image | None
    samples: Image | None
    misclassified: Image | None
    config: list[tuple[str, str]]
    environment: list[tuple[str, str]]
    tta: dict | None = None
    calibration_off: str | None = None  # why no temperature was fitted (finetune)
    baselines: list[dict] | None = None  # finetune's logistic regressions (experiments/baseline.py)
    baseline_verdicts: list[str] | None = None  # a sentence for each that matches or beats the network


def load_run(run_dir: Path) -> dict:
    """results.json of a run folder, or a one-line error naming what is wrong."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder")
    if not results_file(run_dir).is_file():
        raise UserError(f"{run_dir}: not a transferkit run folder (no {RESULTS_FILE})")
    return read_results(run_dir)


def write_report(run_dir: Path) -> Path:
    """Build report.html in `run_dir` from its files; returns its path."""
    run_dir = Path(run_dir)
    results = load_run(run_dir)
    if results.get("experiment") == "study":
        from .study import write_study_report  # scipy loads with it: only for studies

        return write_study_report(run_dir, results)
    if results.get("experiment") == "rank":
        from .rank import rank_view  # drawn from the rank's table, not from phases

        return write_html(run_dir / REPORT_FILE, render("rank.html.j2", report=rank_view(results, read_status(run_dir),
                                                                                           flatten)))
    view = build_view(run_dir, results)
    return write_html(run_dir / REPORT_FILE, render("report.html.j2", report=view, classes_label=classes_label,
                                                    imbalance_ratio=IMBALANCE_RATIO))


def build_view(run_dir: Path, results: dict) -> ReportView:
    phases = results.get("phases", {})
    experiment = results.get("experiment", "split")
    on_backbone = experiment == "split" and bool(results.get("config", {}).get("backbone"))
    roles = {**ROLES, **(BACKBONE_ROLES if on_backbone else {})}
    dataset = results.get("dataset", {})
    name = dataset.get("name") or Path(dataset.get("origin", "data")).name
    title, intro = _title_and_intro(results, name, on_backbone)
    return ReportView(
        title=title, intro=intro, experiment=experiment, dataset=name, origin=str(dataset.get("origin", "")),
        created=results.get("created", ""), status=read_status(run_dir),
        phases=[_phase_view(n, p, results, roles) for n, p in phases.items()],
        gain=transfer_gain(phases),
        curves=[figure_image(overlay_curves_figure(group, metric, lines), f"{metric} per epoch: {group}")
                for group, lines in _curve_groups(phases, continued=experiment == "finetune")
                for metric in ("accuracy", "loss")],
        time_bars=figure_image(time_figure(phases), "training time per phase") if phases else None,
        samples=png_image(run_dir / "samples.png", "sample training images with their classes"),
        misclassified=png_image(run_dir / "misclassified.png", "misclassified validation images"),
        config=flatten(results.get("config", {})),
        environment=flatten(results.get("environment", {})) + (
            flatten(results["distributed"], "distributed.")  # under torchrun: the world, batch, steps per rank
            if results.get("distributed", {}).get("world_size", 1) > 1 else []),
        tta=results.get("tta"), calibration_off=(results.get("calibration") or {}).get("reason"),
        baselines=results.get("baselines"), baseline_verdicts=baseline_verdicts(results),
    )


def _title_and_intro(results: dict, name: str, on_backbone: bool) -> tuple[str, str]:
    """The page's title and the paragraph that tells a newcomer what the experiment did."""
    config = results.get("config", {})
    if results.get("experiment") == "finetune":
        weights = {"imagenet": "ImageNet weights", "none": "random weights"}.get(
            config.get("weights"), f"weights from {config.get('weights')}")
        return (f"{config.get('backbone', 'backbone')} fine-tuned on {name}",
                f"A {config.get('backbone', '')} backbone ({weights}) with a new head, trained on "
                f"{len(results.get('classes', []))} classes of {name}: first the head alone on the frozen "
                "backbone, then, if asked, the whole network.")
    if on_backbone:
        return (f"Transfer learning on {name}",
                f"The source is {results.get('source', 'a pretrained backbone')}: the backbone is frozen and a new "
                "head is trained on its features for the target classes (transfer). The same network trained "
                "from random weights is the control: the difference is what the pretraining bought.")
    return (f"Transfer learning on {name}",
            "A network learns the source classes; its convolutional features are frozen and its classifier "
            "is trained on the target classes (transfer). The same network trained from scratch on the "
            "target classes is the control: the difference is what the transfer bought.")


def _phase_view(name: str, p: dict, results: dict, roles: dict[str, str]) -> PhaseView:
    matrix = p.get("confusion_matrix")
    title = f"{name}: confusion matrix (validation)"
    if matrix is None and results.get("confusion_matrix") is not None and name == list(results["phases"])[-1]:
        # finetune runs before per-phase matrices recorded one, of the final model
        matrix, title = results["confusion_matrix"], "final model: confusion matrix (validation)"
    confusion = None
    if matrix is not None and len(matrix) == len(p["classes"]):
        confusion = figure_image(confusion_figure(np.asarray(matrix), p["classes"], title), title)
    layers = [LayerRow.from_dict(r) for r in p["layers"]] if "layers" in p else None
    metrics = class_metrics(matrix) if matrix is not None and len(matrix) == len(p["classes"]) else None
    calibration = p.get("calibration")
    reliability = None if calibration is None else figure_image(
        reliability_figure(calibration, f"{name}: reliability ({calibration['images']} {calibration['split']} images)"),
        f"{name}: reliability diagram before and after temperature scaling")
    return PhaseView(name=name, role=roles.get(name, ""), color=PHASE_COLORS.get(name, "#777777"),
                     classes=list(p["classes"]), accuracy=held_out(p, "accuracy"), loss=held_out(p, "loss"),
                     seconds=p["train_seconds"], epochs=p["epochs"], train_samples=p["train_samples"],
                     held_out_samples=held_out(p, "samples"), params=p["params"], layers=layers, confusion=confusion,
                     metrics=metrics, class_weights=(p.get("class_weights") or {}).get("reason"),
                     calibration=calibration, reliability=reliability,
                     stopping=describe_stopping(p["stopping"]) if "stopping" in p else None,
                     split="test" if p.get("validated_on") == "test" else "validation")


def _curve_groups(phases: dict, continued: bool) -> list[tuple[str, list[tuple[str, list[dict], int]]]]:
    """Charts to draw: phases on the same classes share one (transfer over scratch).

    `continued`: the phases are parts of one training (finetune), so each one's epochs follow the last's.
    """
    if continued:
        lines, offset = [], 0
        for name, p in phases.items():
            lines.append((name, p["history"], offset))
            offset += len(p["history"])
        return [(", then ".join(phases), lines)] if lines else []
    groups: dict[tuple[str, ...], list[str]] = {}
    for name, p in phases.items():
        groups.setdefault(tuple(p["classes"]), []).append(name)
    return [(f"{' vs '.join(names)} ({classes_label(list(classes))})",
             [(n, phases[n]["history"], 0) for n in names]) for classes, names in groups.items()]


def classes_label(classes: list[str], shown: int = 6) -> str:
    """'0, 1, 2' or, for many, 'a, b, c, d, e, ... (40 classes)'."""
    if len(classes) <= shown:
        return ", ".join(classes)
    return ", ".join(classes[: shown - 1]) + f", ... ({len(classes)} classes)"


def flatten(d: dict, prefix: str = "") -> list[tuple[str, str]]:
    """Nested settings as (dotted key, text) rows: model.filters = 32."""
    return [(key, ", ".join(map(str, value)) if isinstance(value, list) else "default" if value is None else str(value))
            for key, value in dotted(d, prefix)]

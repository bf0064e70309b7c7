"""The record of a run: phases with their histories, written as results.json and history.csv."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from ..atomic import write_atomic
from ..config import BASELINE_MATCH, TEMPERATURE_RANGE
from ..errors import UserError, first_line
from ..fields import Fields
from ..jsonfile import read_json, strict_json
from ..models import LayerRow, ParamCounts
from ..training import EpochRecord
from ..training.metrics import class_metrics

RESULTS_FILE = "results.json"
STUDY_FILE = "study.json"  # a study's record, in the same shape: experiment "study", phases, and its points
HISTORY_FILE = "history.csv"
VALIDATED_ON = ("val", "test")  # a phase's held-out split: a validation split, or a test split


@dataclass
class PhaseResult:
    """One phase (`source`, `transfer` or `scratch`): what it trained on, how long, how well."""

    name: str
    classes: list[str]
    train_samples: int
    held_out_samples: int  # the images it was validated on: the split `validated_on` names
    epochs: int
    train_seconds: float
    loss: float  # the kept epoch's, on those images
    accuracy: float
    params: ParamCounts
    history: list[EpochRecord]
    feature_cache_seconds: float | None = None  # part of train_seconds, when the frozen features were cached
    # For report.html; None in runs made before transferkit recorded them.
    layers: list[LayerRow] | None = None  # the Keras-style parameter summary
    confusion_matrix: list[list[int]] | None = None  # validation counts, true class (rows) x predicted
    misclassified: list[dict] | None = None  # the report's examples: index in the validation set, true, predicted
    class_weights: dict | None = None  # the training loss's weights and why (training/class_weights.py)
    calibration: dict | None = None  # the temperature fitted on validation images, ECE before and after
    # How long it trained and which epoch it kept (experiments/phase.py StopPlan.record); None: a study's point,
    # or a run made before (the last epoch kept).
    stopping: dict | None = None
    # "val" (a validation split, held out from training) or "test" (a test split): the held-out figures' keys
    # in results.json say which (val_accuracy, test_accuracy), so that validation is never called test. None:
    # not said (a study's points; runs recorded before transferkit said it), whose keys are test_* as they were.
    validated_on: str | None = None

    def to_dict(self) -> dict:
        split = self.validated_on or "test"
        d = {
            "classes": self.classes,
            "train_samples": self.train_samples,
            f"{split}_samples": self.held_out_samples,
            "epochs": self.epochs,
            "train_seconds": round(self.train_seconds, 4),
            f"{split}_loss": self.loss,
            f"{split}_accuracy": self.accuracy,
            "params": self.params.to_dict(),
            "history": [r.to_dict() for r in self.history],
        }
        if self.feature_cache_seconds is not None:
            d["feature_cache_seconds"] = round(self.feature_cache_seconds, 4)
        if self.layers is not None:
            d["layers"] = [r.to_dict() for r in self.layers]
        if self.confusion_matrix is not None:
            d["confusion_matrix"] = self.confusion_matrix
            # Derived from the matrix, written out for people and tools that read results.json.
            d["metrics"] = class_metrics(self.confusion_matrix)
        if self.class_weights is not None:
            d["class_weights"] = self.class_weights
        if self.calibration is not None:
            d["calibration"] = self.calibration
        if self.misclassified is not None:
            d["misclassified"] = self.misclassified
        if self.stopping is not None:
            d["stopping"] = self.stopping
        if self.validated_on is not None:
            d["validated_on"] = self.validated_on
        return d

    @classmethod
    def from_dict(cls, name: str, d: dict) -> PhaseResult:
        """A finished phase as results.json recorded it (for resumed runs and rebuilt reports)."""
        return cls(name=name, classes=d["classes"], train_samples=d["train_samples"],
                   held_out_samples=held_out(d, "samples"), epochs=d["epochs"], train_seconds=d["train_seconds"],
                   loss=held_out(d, "loss"), accuracy=held_out(d, "accuracy"), params=ParamCounts(**d["params"]),
                   history=[EpochRecord(**r) for r in d["history"]],
                   feature_cache_seconds=d.get("feature_cache_seconds"),
                   layers=[LayerRow.from_dict(r) for r in d["layers"]] if "layers" in d else None,
                   confusion_matrix=d.get("confusion_matrix"), misclassified=d.get("misclassified"),
                   class_weights=d.get("class_weights"), calibration=d.get("calibration"),
                   stopping=d.get("stopping"),
                   validated_on=d["validated_on"] if d.get("validated_on") in VALIDATED_ON else None)


def key_split(phase: dict) -> str:
    """The split a recorded phase's held-out keys name: its validated_on, "test" where it says none (the keys
    such phases were written with)."""
    return phase.get("validated_on") if phase.get("validated_on") in VALIDATED_ON else "test"


def held_out_key(phase: dict, figure: str) -> str:
    """results.json's key for a phase's `figure` ("samples", "loss", "accuracy") on the split it was validated
    on: val_accuracy on a validation split, test_accuracy on a test split. Runs recorded before the keys named
    the split wrote test_* whatever it was, and are read as written."""
    key = f"{key_split(phase)}_{figure}"
    return key if key in phase or f"test_{figure}" not in phase else f"test_{figure}"


def dotted(record: dict, prefix: str = "") -> list[tuple[str, object]]:
    """A nested record's leaves (lists are leaves) under dotted keys: ("model.filters", 32). The report's settings,
    the trackers' params and numbers are written from it."""
    leaves: list[tuple[str, object]] = []
    for key, value in record.items():
        leaves += dotted(value, f"{prefix}{key}.") if isinstance(value, dict) else [(f"{prefix}{key}", value)]
    return leaves


def held_out(phase: dict, figure: str):
    """A recorded phase's `figure` on the images it was validated on (see held_out_key)."""
    return phase[held_out_key(phase, figure)]


@dataclass(frozen=True)
class Gain:
    """What transfer bought over scratch on the target classes."""

    points: float  # accuracy difference in percentage points
    speedup: float | None  # scratch time / transfer time; None when either took no measurable time

    @property
    def pace(self) -> str:
        """'1.4x faster', or '2.5x slower' (a backbone's feature pass on few images), never '0.4x faster'."""
        if self.speedup is None:
            return "times too short to compare"
        return f"{self.speedup:.1f}x faster" if self.speedup >= 1 else f"{1 / self.speedup:.1f}x slower"


def transfer_gain(phases: dict[str, dict]) -> Gain | None:
    """The transfer phase against the scratch control, from results.json's phases; None without both."""
    if "transfer" not in phases or "scratch" not in phases:
        return None
    t, s = phases["transfer"], phases["scratch"]
    speedup = s["train_seconds"] / t["train_seconds"] if t["train_seconds"] > 0 and s["train_seconds"] > 0 else None
    return Gain(points=(held_out(t, "accuracy") - held_out(s, "accuracy")) * 100, speedup=speedup)


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` so that `path` is never left half-written (see atomic.write_atomic)."""
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def results_file(run_dir: Path, results: dict | None = None) -> Path:
    """The record of a run folder: results.json, or study.json for a study (`results` given: the one it is
    written to; else the one that is there)."""
    run_dir = Path(run_dir)
    if results is not None:
        return run_dir / (STUDY_FILE if results.get("experiment") == "study" else RESULTS_FILE)
    return run_dir / STUDY_FILE if (run_dir / STUDY_FILE).is_file() else run_dir / RESULTS_FILE


def write_results(run_dir: Path, results: dict) -> None:
    """results.json (a study's: study.json) and history.csv (one row per phase and epoch)."""
    path = results_file(run_dir, results)
    write_text_atomic(path, strict_json(results, what=str(path)) + "\n")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    columns = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds"]
    writer.writerow(["phase", *columns])
    for phase, data in results["phases"].items():
        for row in data["history"]:
            writer.writerow([phase, *(row[c] for c in columns)])
    write_text_atomic(run_dir / HISTORY_FILE, buf.getvalue())


def read_results(run_dir: Path) -> dict:
    """results.json (or study.json) of a run folder as a dict, or one UserError naming the file and what is wrong."""
    path = results_file(run_dir)
    try:
        results = read_json(path)
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise UserError(f"{path}: cannot be read ({first_line(e)[:120]}); the run folder is damaged") from None
    if not isinstance(results, dict):
        raise UserError(f"{path}: must hold a JSON object, got {type(results).__name__}; the run folder is damaged")
    check_results(path, results)
    return results


def baseline_verdicts(results: dict) -> list[str]:
    """A plain sentence for each of finetune's baselines that matches (within BASELINE_MATCH) or beats the
    fine-tuned network's validation accuracy (its last phase's), saying what that means."""
    phases = results.get("phases") or {}
    if not phases:
        return []
    network = held_out(list(phases.values())[-1], "accuracy")
    trained = "the fine-tuning" if "unfrozen" in phases else "the trained head"
    meaning = {"features": f"the features carry the task; {trained} adds nothing here",
               "pixels": "the task needs no pretrained network here; the pixels carry it"}
    return [f"A {b['name']} reaches {b['val_accuracy']:.2f}, the fine-tuned network {network:.2f}: "
            f"{meaning.get(b['kind'], 'the fine-tuned network adds nothing here')}."
            for b in results.get("baselines") or [] if b["val_accuracy"] >= network - BASELINE_MATCH]


def check_results(path: Path, results: dict) -> None:
    """The fields that report, compare, predict and --resume read, checked for type: a file of the wrong shape is
    one line naming the file and the field, not a KeyError later."""
    fields = Fields(path, results, "the run folder is damaged; run it again")
    fields.sub("config")
    if "experiment" in fields:
        fields.text("experiment")
    if "calibration" in fields:  # finetune's: why no temperature was fitted, or null
        reason = fields.sub("calibration").obj.get("reason")
        if reason is not None and not isinstance(reason, str):
            fields.fail("calibration.reason", "a text or null", reason)
    if "tta" in fields:
        tta = fields.sub("tta")
        tta.texts("views")
        for key in ("without", "with"):
            for metric in ("accuracy", "balanced_accuracy", "macro_f1"):
                tta.sub(key).number(metric, low=0, high=1)
    for baseline in fields.subs("baselines") if "baselines" in fields else []:  # finetune's (the report says them)
        for key in ("name", "kind", "fit_on"):
            baseline.text(key)
        baseline.number("val_accuracy", low=0, high=1)
        baseline.number("seconds", low=0)
    for name, phase in fields.sub("phases").obj.items():
        p = Fields(path, phase, "the run folder is damaged; run it again", f"phases.{name}.")
        p.texts("classes")
        if "validated_on" in p:  # it names the keys of the figures below
            p.choice("validated_on", VALIDATED_ON)
        for key in ("train_samples", held_out_key(phase, "samples"), "epochs"):
            p.integer(key)
        p.number("train_seconds", low=0)
        p.number(held_out_key(phase, "accuracy"), low=0, high=1)
        p.number(held_out_key(phase, "loss"))
        counts = p.sub("params")
        for key in ("total", "trainable", "non_trainable"):
            counts.integer(key)
        for record in p.subs("history"):
            record.integer("epoch", low=1)
            for key in ("loss", "accuracy", "val_loss", "val_accuracy", "seconds"):
                record.number(key)
        if "stopping" in p:  # the report says how long the phase trained and which epoch it kept
            stop = p.sub("stopping")
            for key in ("epochs_planned", "epochs_trained", "kept_epoch"):
                stop.integer(key, low=1)
            stop.text("reason")
        if "class_weights" in p:  # the report says them
            p.sub("class_weights").text("reason")
        if "calibration" in p:  # the report draws its reliability diagram
            c = p.sub("calibration")
            c.number("temperature", *TEMPERATURE_RANGE)
            c.integer("images", low=1)
            for key in ("ece_before", "ece_after"):
                c.number(key, low=0, high=1)
            for key in ("reliability_before", "reliability_after"):
                bins = c.sub(key)
                n = len(bins.integers("counts"))
                bins.numbers("confidence", n, 0, 1)
                bins.numbers("accuracy", n, 0, 1)

"""`transferkit compare`: several run folders side by side, as one HTML page and console tables."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from ..errors import UserError
from .figures import RUN_COLORS, runs_curves_figure
from .html import Image, duration, figure_image, render, write_html
from .report import flatten, load_run
from .results import held_out
from .status import read_status


@dataclass(frozen=True)
class RunInfo:
    label: str
    path: str
    experiment: str
    dataset: str
    created: str
    status: str
    results: dict


@dataclass(frozen=True)
class PhaseMetrics:
    """One run's figures for one phase; `delta` is its accuracy minus the first run's, in points."""

    run: int
    accuracy: float
    loss: float
    seconds: float
    epochs: int
    train_samples: int
    delta: float | None


@dataclass(frozen=True)
class CompareView:
    runs: list[RunInfo]
    differences: list[tuple[str, list[str]]]  # setting -> its value in each run, only where they differ
    same: int  # how many settings all runs share
    phases: list[tuple[str, list[PhaseMetrics]]]
    curves: list[Image]


def load_runs(run_dirs: list[str | Path]) -> list[RunInfo]:
    if len(run_dirs) < 2:
        raise UserError("compare needs at least two run folders")
    names = [Path(d).name or str(d) for d in run_dirs]
    runs = []
    for d, name in zip(run_dirs, names, strict=True):
        results = load_run(Path(d))
        dataset = results.get("dataset", {})
        status = read_status(Path(d)) or {}
        runs.append(RunInfo(
            label=name if names.count(name) == 1 else str(d),  # same folder names: the paths tell them apart
            path=str(d), experiment=results.get("experiment", "split"),
            dataset=dataset.get("name") or Path(dataset.get("origin", "")).name, created=results.get("created", ""),
            status=status.get("status", "unknown"), results=results))
    return runs


def build_view(runs: list[RunInfo]) -> CompareView:
    settings = [dict(flatten(r.results.get("config", {}))) | dict(flatten(r.results.get("environment", {}),
                                                                          "environment.")) for r in runs]
    keys = list(dict.fromkeys(k for s in settings for k in s))
    differences = [(k, [s.get(k, "-") for s in settings]) for k in keys if len({s.get(k, "-") for s in settings}) > 1]
    phase_names = list(dict.fromkeys(p for r in runs for p in r.results.get("phases", {})))
    phases = []
    for name in phase_names:
        first = runs[0].results.get("phases", {}).get(name)
        rows = []
        for i, r in enumerate(runs):
            p = r.results.get("phases", {}).get(name)
            if p is None:
                continue
            delta = (held_out(p, "accuracy") - held_out(first, "accuracy")) * 100 if first is not None and i > 0 else None
            rows.append(PhaseMetrics(i, held_out(p, "accuracy"), held_out(p, "loss"), p["train_seconds"], p["epochs"],
                                     p["train_samples"], delta))
        phases.append((name, rows))
    curves = []
    for name in phase_names:
        histories = {r.label: r.results["phases"][name]["history"] for r in runs if name in r.results.get("phases", {})}
        curves += [figure_image(runs_curves_figure(name, metric, histories), f"validation {metric} of phase {name}, per run")
                   for metric in ("accuracy", "loss")]
    return CompareView(runs, differences, len(keys) - len(differences), phases, curves)


def write_comparison(run_dirs: list[str | Path], out: Path) -> tuple[Path, CompareView]:
    """Write the comparison page to `out`; returns its path and what it shows (for the console tables)."""
    view = build_view(load_runs(run_dirs))
    out = Path(out)
    if out.is_dir():
        out = out / "compare.html"
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: the folder {out.parent} does not exist")
    return write_html(out, render("compare.html.j2", view=view, colors=RUN_COLORS)), view


def metrics_table(view: CompareView) -> Table:
    """Console: per phase, each run's validation accuracy, loss and time."""
    table = Table(title="Runs compared", title_justify="left")
    for col in ("phase", "run", "val acc", "vs run 1", "val loss", "time", "epochs"):
        table.add_column(col, justify="left" if col in ("phase", "run") else "right", no_wrap=col != "run")
    for name, rows in view.phases:
        for m in rows:
            table.add_row(name, view.runs[m.run].label, f"{m.accuracy:.4f}",
                          "" if m.delta is None else f"{m.delta:+.2f} pts", f"{m.loss:.4f}", duration(m.seconds),
                          str(m.epochs))
    return table


def differences_table(view: CompareView) -> Table:
    """Console: the settings in which the runs differ."""
    table = Table(title="Configuration differences", title_justify="left")
    table.add_column("setting", no_wrap=True)
    for r in view.runs:
        table.add_column(r.label, overflow="fold")
    for key, values in view.differences:
        table.add_row(key, *values)
    return table

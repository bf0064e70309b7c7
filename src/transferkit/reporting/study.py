"""A study's numbers: the summary over seeds with 95% intervals, the sentences computed from them, study.csv,
the plots and the study's report page. Everything from study.json alone."""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from .figures import PHASE_COLORS, tight, title_axes
from .html import figure_image, png_image, render, write_html
from .results import write_text_atomic
from .status import read_status

STUDY_CSV = "study.csv"
CSV_COLUMNS = ("arm", "shots", "cut", "seed", "train_samples", "steps", "test_accuracy", "test_loss", "seconds",
               "trainable")
ARM_COLORS = {**PHASE_COLORS, "baseB": "#7f7f7f", "BnB": "#1f77b4", "BnB+": "#17becf", "AnB": "#d62728",
              "AnB+": "#ff7f0e"}
CROSSOVER_POINTS = 1.0  # scratch "catches up" within this many accuracy points of transfer


def interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and its 95% interval (Student's t over seeds); the interval is the mean itself for one value."""
    a = np.asarray(values, dtype=np.float64)
    mean = float(a.mean())
    if len(a) < 2:
        return mean, mean, mean
    from scipy import stats  # here: scipy.stats takes a second to import, which only studies need

    half = float(stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a)))
    return mean, mean - half, mean + half


def summarise(points: dict[str, dict], kind: str) -> tuple[list[dict], list[str], int | None]:
    """Per arm and shot count (or cut): seeds, mean accuracy and loss with the accuracy's 95% interval, mean
    seconds. Then the findings as sentences and, for shots, the crossover (0: all images; None: none)."""
    x_key = "shots" if kind == "shots" else "cut"
    groups: dict[tuple[str, object], list[dict]] = defaultdict(list)
    for p in points.values():
        groups[(p["arm"], p[x_key])].append(p)
    rows = []
    for (arm, x), ps in sorted(groups.items(), key=lambda g: (g[0][0], _order(g[0][1]))):
        mean, low, high = interval([p["test_accuracy"] for p in ps])
        rows.append({"arm": arm, x_key: x, "seeds": len(ps), "test_accuracy": mean, "ci_low": low, "ci_high": high,
                     "test_loss": float(np.mean([p["test_loss"] for p in ps])),
                     "seconds": float(np.mean([p["seconds"] for p in ps]))})
    if kind == "shots":
        findings, crossover = _shots_findings(points)
        return rows, findings, crossover
    return rows, _freeze_findings(rows), None


def _order(x: object) -> float:
    """Shot counts in order, all (0) last; baseB's cut (None) first."""
    if x is None:
        return -1
    return math.inf if x == 0 else float(x)


def paired_gains(points: dict[str, dict]) -> dict[int, list[float]]:
    """Per shot count: transfer minus scratch accuracy in points, seed by seed (the same images for both)."""
    by = {(p["arm"], p["shots"], p["seed"]): p["test_accuracy"] for p in points.values()}
    gains: dict[int, list[float]] = defaultdict(list)
    for (arm, shots, seed), acc in by.items():
        if arm == "transfer" and ("scratch", shots, seed) in by:
            gains[shots].append((acc - by[("scratch", shots, seed)]) * 100)
    return dict(sorted(gains.items(), key=lambda g: _order(g[0])))


def _shots_findings(points: dict[str, dict]) -> tuple[list[str], int | None]:
    gains = paired_gains(points)
    if not gains:
        return ["the study has no shot count with both arms; nothing to compare"], None
    findings = []
    for shots, g in gains.items():
        mean, low, high = interval(g)
        lead = f"transfer leads by {mean:.1f} points" if mean >= 0 else f"scratch leads by {-mean:.1f} points"
        findings.append(f"With {_images(shots)} {lead} (95% interval {low:+.1f} to {high:+.1f}, "
                        f"{len(g)} seeds).")
    # The smallest shot count from which on (it and every larger one) scratch is within a point of transfer.
    crossover = None
    for shots in reversed(list(gains)):
        if np.mean(gains[shots]) > CROSSOVER_POINTS:
            break
        crossover = shots
    if crossover is None:
        findings.append(f"Scratch does not come within {CROSSOVER_POINTS:.0f} point of transfer in this range.")
    else:
        findings.append(f"Scratch comes within {CROSSOVER_POINTS:.0f} point of transfer from {_images(crossover)} on.")
    return findings, crossover


def _freeze_findings(rows: list[dict]) -> list[str]:
    """Yosinski et al.'s three findings, checked on these numbers (a measurement, not a target)."""
    by = {(r["arm"], r["cut"]): r for r in rows}
    base = by.get(("baseB", None))
    cuts = sorted({r["cut"] for r in rows if r["cut"] is not None})
    if base is None or not cuts:
        return ["baseB and at least one cut are needed to compare the arms with the reference."]
    findings = [f"baseB reaches {base['test_accuracy']:.4f} (95% interval {base['ci_low']:.4f} to "
                f"{base['ci_high']:.4f})."]

    def drop(arm: str, cut: int) -> float:
        return (base["test_accuracy"] - by[(arm, cut)]["test_accuracy"]) * 100

    if all(("BnB", c) in by for c in cuts):
        worst = max(cuts, key=lambda c: drop("BnB", c))
        findings.append(f"BnB (baseB's first layers frozen, the rest retrained) is {_below(drop('BnB', worst))} "
                        f"baseB at its worst cut, {worst}: "
                        + ("a drop, as co-adapted layers split apart in the paper." if drop("BnB", worst) > 0.5 else
                           "no fragile co-adaptation shows on this network."))
    if all(("AnB", c) in by for c in cuts) and len(cuts) > 1:
        first, last = drop("AnB", cuts[0]), drop("AnB", cuts[-1])
        findings.append(f"AnB (source layers frozen) is {_below(first)} baseB at cut {cuts[0]} and "
                        f"{_below(last)} it at cut {cuts[-1]}: "
                        + ("the deeper the frozen source layers, the worse, as the paper found." if last > first
                           else "freezing deeper source layers does not cost more here."))
    if all(("AnB+", c) in by for c in cuts):
        above = [c for c in cuts if by[("AnB+", c)]["ci_low"] > base["ci_high"]]
        findings.append(f"AnB+ (source layers fine-tuned) beats baseB beyond the intervals at "
                        f"{len(above)} of {len(cuts)} cuts"
                        + (" (the paper's lasting generalisation boost)." if len(above) == len(cuts) else "."))
    return findings


def _below(points: float) -> str:
    return f"{points:.2f} points below" if points >= 0 else f"{-points:.2f} points above"


def _images(shots: int) -> str:
    return "all images" if shots == 0 else f"{shots} image{'s' if shots != 1 else ''} per class"


def write_study_csv(path: Path, points: dict[str, dict]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for p in points.values():
        writer.writerow(["all" if c == "shots" and p[c] == 0 else ("" if p[c] is None else p[c]) for c in CSV_COLUMNS])
    write_text_atomic(path, buf.getvalue())


def shots_figure(results: dict) -> Figure:
    """Test accuracy against images per class (log axis), one line per arm with its 95% interval band."""
    rows = results["summary"]
    sizes = results["dataset"]["target_class_sizes"]
    everything = float(np.mean(sizes))  # "all" drawn at the mean class size
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    for arm in ("transfer", "scratch"):
        mine = sorted((r for r in rows if r["arm"] == arm), key=lambda r: _order(r["shots"]))
        if not mine:
            continue
        x = [everything if r["shots"] == 0 else r["shots"] for r in mine]
        color = ARM_COLORS[arm]
        ax.plot(x, [r["test_accuracy"] for r in mine], "o-", color=color, label=arm)
        ax.fill_between(x, [r["ci_low"] for r in mine], [r["ci_high"] for r in mine], color=color, alpha=0.2)
    _accuracy_axis(ax, rows)
    ax.set_xscale("log")
    ticks = sorted({everything if r["shots"] == 0 else r["shots"] for r in rows})
    ax.set_xticks(ticks, [("all" if t == everything else f"{t:g}") for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("training images per target class")
    ax.set_ylabel("test accuracy")
    title_axes(ax, "Transfer vs scratch by training images (mean, 95% interval over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    tight(fig)
    return fig


def freeze_figure(results: dict) -> Figure:
    """Test accuracy against the cut, one line per arm with interval bars, baseB as the reference line (the
    layout of Yosinski et al.'s Figure 2)."""
    rows = results["summary"]
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    base = next((r for r in rows if r["arm"] == "baseB"), None)
    if base is not None:
        ax.axhline(base["test_accuracy"], color=ARM_COLORS["baseB"], linestyle="--", label="baseB")
        ax.axhspan(base["ci_low"], base["ci_high"], color=ARM_COLORS["baseB"], alpha=0.15)
    cuts = sorted({r["cut"] for r in rows if r["cut"] is not None})
    for i, arm in enumerate(("BnB", "BnB+", "AnB", "AnB+")):
        mine = sorted((r for r in rows if r["arm"] == arm), key=lambda r: r["cut"])
        if not mine:
            continue
        x = [r["cut"] + (i - 1.5) * 0.04 for r in mine]  # side by side, so the bars do not hide each other
        y = [r["test_accuracy"] for r in mine]
        err = [[m - r["ci_low"] for m, r in zip(y, mine)], [r["ci_high"] - m for m, r in zip(y, mine)]]
        ax.errorbar(x, y, yerr=err, fmt="o-", color=ARM_COLORS[arm], capsize=3, label=arm)
    _accuracy_axis(ax, rows)
    stages = results.get("dataset", {}).get("stages")  # a backbone's: its stages are the cuts
    ax.set_xticks(cuts, [f"{c}\n{stages[c - 1]}" if stages else f"{c}" for c in cuts])
    ax.set_xlabel(f"cut: the first n stages of {results['config']['split']['backbone']} copied" if stages
                  else "cut: the first n weight layers copied")
    ax.set_ylabel("test accuracy")
    title_axes(ax, "Freezing and fine-tuning copied layers (mean, 95% interval over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    tight(fig)
    return fig


def _accuracy_axis(ax, rows: list[dict]) -> None:
    """The intervals' range, within [0, 1]: a t-interval over few seeds can reach beyond what accuracy can be."""
    low, high = min(r["ci_low"] for r in rows), max(r["ci_high"] for r in rows)
    pad = 0.02 * max(high - low, 0.01)
    ax.set_ylim(max(0.0, low - pad), min(1.0, high) + pad)


def write_study_report(run_dir: Path, results: dict) -> Path:
    """The study's report.html: the plot, the findings, the table per arm and x, every point."""
    kind = results.get("kind", "shots")
    # From the points, the record of what ran: a study interrupted before its summary reports what it has.
    rows, findings, _ = summarise(results.get("points") or {}, kind)
    results = {**results, "summary": rows}
    figure = None
    if rows:
        figure = figure_image((shots_figure if kind == "shots" else freeze_figure)(results),
                              f"test accuracy by {'training images per class' if kind == 'shots' else 'cut'}")
    dataset = results.get("dataset", {})
    html = render("study.html.j2", study={
        "kind": kind, "title": f"{kind} study on {dataset.get('name', '')}", "created": results.get("created", ""),
        "status": read_status(run_dir), "dataset": dataset, "findings": findings if rows else [],
        "rows": rows, "x_key": "shots" if kind == "shots" else "cut", "points": list(results.get("points", {}).values()),
        "config": results.get("config", {}), "figure": figure or png_image(run_dir / "study.png", "the study's plot"),
    })
    return write_html(run_dir / "report.html", html)

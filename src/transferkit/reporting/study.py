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

from ..config import STUDY_MAX_SEEDS
from ..fields import Fields
from .figures import PHASE_COLORS, tight, title_axes
from .html import figure_image, png_image, render, write_html
from .results import STUDY_FILE, write_text_atomic
from .status import read_status

STUDY_CSV = "study.csv"
CSV_COLUMNS = ("arm", "shots", "cut", "seed", "train_samples", "steps", "test_accuracy", "test_loss", "seconds",
               "trainable")
ARM_COLORS = {**PHASE_COLORS, "baseB": "#7f7f7f", "BnB": "#1f77b4", "BnB+": "#17becf", "AnB": "#d62728",
              "AnB+": "#ff7f0e"}
CROSSOVER_POINTS = 1.0  # scratch "catches up" within this many accuracy points of transfer


ACCURACY_RANGE = (0.0, 1.0)
POINTS_RANGE = (-100.0, 100.0)  # one accuracy minus another, in percentage points


def interval(values: list[float], bounds: tuple[float, float]) -> tuple[float, float | None, float | None]:
    """Mean and its 95% interval (Student's t over seeds), cut to `bounds`, the range the values can take (an
    accuracy cannot leave [0, 1]): t's interval from 2 or 3 seeds can reach far past it, where no true value lies,
    so the cut loses no coverage. No interval (None, None) from one value: one seed has no spread (see
    interval_note)."""
    a = np.asarray(values, dtype=np.float64)
    mean = float(a.mean())
    if len(a) < 2:
        return mean, None, None
    half = float(_t(len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a)))
    return mean, max(mean - half, bounds[0]), min(mean + half, bounds[1])


def interval_note(seeds: int) -> str | None:
    """What a reader needs to know about an interval over `seeds` seeds, where anything."""
    if seeds < 2:
        return "no interval: no spread from one seed"
    if seeds == 2:
        return f"a t interval from 2 seeds is wide, t = {_t(1):.1f}"
    return None


def seeds_needed(values: list[float]) -> int | None:
    """An estimate: the fewest seeds at which an interval of this mean and standard deviation s would exclude
    zero, the least n with t(n - 1) s / sqrt(n) < |mean| (n about (t s / mean)^2); None when no count up to
    STUDY_MAX_SEEDS would (or the mean is zero)."""
    a = np.asarray(values, dtype=np.float64)
    mean, s = abs(float(a.mean())), float(a.std(ddof=1)) if len(a) > 1 else math.nan
    if mean == 0 or not math.isfinite(s):
        return None
    n = np.arange(2, STUDY_MAX_SEEDS + 1)
    enough = _t(n - 1) * s / np.sqrt(n) < mean
    return int(n[enough][0]) if enough.any() else None


def _t(df):
    from scipy import stats  # here: scipy.stats takes a second to import, which only studies need

    return stats.t.ppf(0.975, df)


def summarise(points: dict[str, dict], kind: str) -> tuple[list[dict], list[str], int | None]:
    """Per arm and shot count (or cut): seeds, mean accuracy and loss with the accuracy's 95% interval (None
    from one seed, with its note), mean seconds. Then the findings as sentences and, for shots, the crossover
    (0: all images; None: none established)."""
    x_key = "shots" if kind == "shots" else "cut"
    groups: dict[tuple[str, object], list[dict]] = defaultdict(list)
    for p in points.values():
        groups[(p["arm"], p[x_key])].append(p)
    rows = []
    for (arm, x), ps in sorted(groups.items(), key=lambda g: (g[0][0], _order(g[0][1]))):
        mean, low, high = interval([p["test_accuracy"] for p in ps], ACCURACY_RANGE)
        rows.append({"arm": arm, x_key: x, "seeds": len(ps), "test_accuracy": mean, "ci_low": low, "ci_high": high,
                     "ci_note": interval_note(len(ps)),
                     "test_loss": float(np.mean([p["test_loss"] for p in ps])),
                     "seconds": float(np.mean([p["seconds"] for p in ps]))})
    if kind == "shots":
        findings, crossover = _shots_findings(points)
        return rows, findings, crossover
    return rows, _freeze_findings(rows, points), None


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
    findings = [_gain_finding(shots, g) for shots, g in gains.items()]
    sentence, crossover = _crossover({shots: interval(g, POINTS_RANGE) for shots, g in gains.items()})
    return [*findings, sentence], crossover


def _gain_finding(shots: int, gains: list[float]) -> str:
    """Transfer's lead at one shot count: a lead only where its 95% interval excludes zero."""
    mean, low, high = interval(gains, POINTS_RANGE)
    where, seeds, note = f"With {_images(shots)}", _seeds(len(gains)), interval_note(len(gains))
    if low is None:
        return f"{where} the difference is not established at 1 seed: {_ahead(mean)} ({note})."
    if low == high == 0:
        return f"{where} transfer and scratch score the same at each of the {seeds}."
    if low == high:  # every seed the same difference: a t interval of no width, which is no evidence of a lead
        return (f"{where} {'transfer' if mean > 0 else 'scratch'} is {abs(mean):.1f} points ahead at each of the "
                f"{seeds} alike: no spread between the seeds to form an interval from, so no lead is established "
                "(more seeds would show the spread).")
    note = f"; {note}" if note else ""
    if low > 0 or high < 0:
        lead = "transfer leads" if mean > 0 else "scratch leads"
        return f"{where} {lead} by {abs(mean):.1f} points (95% interval {low:+.1f} to {high:+.1f}, {seeds}{note})."
    needed = seeds_needed(gains)
    estimate = (f"about {needed} seeds would be needed for this spread to exclude zero" if needed is not None
                else f"at this spread no number of seeds up to {STUDY_MAX_SEEDS} would exclude zero")
    return (f"{where} the difference is not established at {seeds}: {_ahead(mean)} on average, but the 95% "
            f"interval ({low:+.1f} to {high:+.1f}) includes zero{note}; {estimate} (an estimate from the seeds' "
            "standard deviation s: n = (t s / d)^2).")


def _crossover(intervals: dict[int, tuple[float, float | None, float | None]]) -> tuple[str, int | None]:
    """The sentence on where scratch comes within CROSSOVER_POINTS of transfer, true of every shot count it
    covers, and the crossover: the smallest shot count from which on (it and every larger one) the interval of
    transfer's lead ends at or below CROSSOVER_POINTS (None: not established in this range)."""
    behind = [s for s, (_, low, _) in intervals.items() if low is not None and low > CROSSOVER_POINTS]
    within = [s for s, (_, _, high) in intervals.items() if high is not None and high <= CROSSOVER_POINTS]
    unknown = [s for s in intervals if s not in behind and s not in within]
    crossover = None
    for shots in reversed(list(intervals)):
        if shots not in within:
            break
        crossover = shots
    point = f"{CROSSOVER_POINTS:.0f} point"
    if crossover is not None:
        return (f"Scratch comes within {point} of transfer from {_images(crossover)} on (the 95% interval of "
                f"transfer's lead ends at or below +{CROSSOVER_POINTS:.1f} there and at every larger shot count)."), crossover
    if len(behind) == len(intervals):
        return (f"Scratch does not come within {point} of transfer in this range (the 95% interval of "
                f"transfer's lead lies above +{CROSSOVER_POINTS:.1f} at every shot count)."), None
    if len(unknown) == len(intervals):
        return (f"Whether scratch comes within {point} of transfer is not established at any shot count in this "
                f"range (each 95% interval of transfer's lead reaches both sides of +{CROSSOVER_POINTS:.1f}, or "
                "there is none)."), None
    parts = [f"transfer ahead by more than {point} at {_shot_list(behind)}" if behind else "",
             f"scratch within {point} at {_shot_list(within)}" if within else "",
             f"not established at {_shot_list(unknown)} (the interval reaches both sides of "
             f"+{CROSSOVER_POINTS:.1f}, or there is none)"]
    return (f"Where scratch comes within {point} of transfer is not established in this range: "
            + "; ".join(p for p in parts if p) + "."), None


def _ahead(mean: float) -> str:
    if mean == 0:
        return "level"
    return f"{'transfer' if mean > 0 else 'scratch'} {abs(mean):.1f} points ahead"


def _seeds(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def _shot_list(shots: list[int]) -> str:
    """[1, 10, 0] -> '1, 10 and all images per class'."""
    names = [str(s) if s else "all" for s in shots]
    text = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"{text} image{'' if names == ['1'] else 's'} per class"


def _freeze_findings(rows: list[dict], points: dict[str, dict]) -> list[str]:
    """Yosinski et al.'s three findings, checked on these numbers (a measurement, not a target): a drop or a
    cost only where its 95% interval, paired by seed, excludes zero."""
    by = {(r["arm"], r["cut"]): r for r in rows}
    base = by.get(("baseB", None))
    cuts = sorted({r["cut"] for r in rows if r["cut"] is not None})
    if base is None or not cuts:
        return ["baseB and at least one cut are needed to compare the arms with the reference."]
    findings = [f"baseB reaches {base['test_accuracy']:.4f} ("
                + (f"95% interval {base['ci_low']:.4f} to {base['ci_high']:.4f}" if base["ci_low"] is not None
                   else "") + ("; " if base["ci_low"] is not None and base["ci_note"] else "")
                + (base["ci_note"] or "") + ")."]

    def drop(arm: str, cut: int) -> float:
        return (base["test_accuracy"] - by[(arm, cut)]["test_accuracy"]) * 100

    if all(("BnB", c) in by for c in cuts):
        worst = max(cuts, key=lambda c: drop("BnB", c))
        shown, established = _paired(points, ("baseB", None), ("BnB", worst))
        findings.append(f"BnB (baseB's first layers frozen, the rest retrained) is {_below(drop('BnB', worst))} "
                        f"baseB at its worst cut, {worst} ({shown}): "
                        + ("a drop, as co-adapted layers split apart in the paper." if established == "above" else
                           "no drop from fragile co-adaptation is established on this network."))
    if all(("AnB", c) in by for c in cuts) and len(cuts) > 1:
        first, last = drop("AnB", cuts[0]), drop("AnB", cuts[-1])
        shown, established = _paired(points, ("AnB", cuts[0]), ("AnB", cuts[-1]))
        findings.append(f"AnB (source layers frozen) is {_below(first)} baseB at cut {cuts[0]} and "
                        f"{_below(last)} it at cut {cuts[-1]} (cut {cuts[0]} minus cut {cuts[-1]}: {shown}): "
                        + ("the deeper the frozen source layers, the worse, as the paper found." if established == "above"
                           else "that freezing deeper source layers costs more is not established here."))
    if all(("AnB+", c) in by for c in cuts):
        above = [c for c in cuts if by[("AnB+", c)]["ci_low"] is not None and base["ci_high"] is not None
                 and by[("AnB+", c)]["ci_low"] > base["ci_high"]]
        findings.append(f"AnB+ (source layers fine-tuned) beats baseB beyond the intervals at "
                        f"{len(above)} of {len(cuts)} cuts"
                        + (" (the paper's lasting generalisation boost)." if len(above) == len(cuts) else
                           f" ({base['ci_note']})." if base["ci_low"] is None else "."))
    return findings


def _paired(points: dict[str, dict], a: tuple[str, int | None], b: tuple[str, int | None]) -> tuple[str, str]:
    """Arm a at its cut minus arm b at its, in accuracy points, paired by seed: the interval as words, and
    whether it lies 'above' or 'below' zero or 'includes' it (or there is none)."""
    by = {(p["arm"], p["cut"], p["seed"]): p["test_accuracy"] for p in points.values()}
    seeds = sorted({seed for arm, cut, seed in by if (arm, cut) == a and (*b, seed) in by})
    if len(seeds) < 2:
        return f"paired by seed: {interval_note(1)}", "includes"
    mean, low, high = interval([(by[(*a, s)] - by[(*b, s)]) * 100 for s in seeds], POINTS_RANGE)
    if low == high:  # the same difference at every seed: no spread, no interval to judge by
        return f"paired by seed: {mean:+.2f} points at each of the {_seeds(len(seeds))}, no spread", "includes"
    note = interval_note(len(seeds))
    shown = f"paired 95% interval {low:+.2f} to {high:+.2f} points, {_seeds(len(seeds))}" + (f"; {note}" if note else "")
    return shown, "above" if low > 0 else "below" if high < 0 else "includes"


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
        low, high = zip(*(_band(r) for r in mine), strict=True)
        ax.fill_between(x, low, high, color=color, alpha=0.2)
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
    if base is not None:  # its band where it has an interval (2 seeds or more)
        ax.axhline(base["test_accuracy"], color=ARM_COLORS["baseB"], linestyle="--", label="baseB")
        ax.axhspan(*_band(base), color=ARM_COLORS["baseB"], alpha=0.15)
    cuts = sorted({r["cut"] for r in rows if r["cut"] is not None})
    for i, arm in enumerate(("BnB", "BnB+", "AnB", "AnB+")):
        mine = sorted((r for r in rows if r["arm"] == arm), key=lambda r: r["cut"])
        if not mine:
            continue
        x = [r["cut"] + (i - 1.5) * 0.04 for r in mine]  # side by side, so the bars do not hide each other
        y = [r["test_accuracy"] for r in mine]
        err = [[m - _band(r)[0] for m, r in zip(y, mine, strict=True)], [_band(r)[1] - m for m, r in zip(y, mine, strict=True)]]
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


def _band(row: dict) -> tuple[float, float]:
    """A row's interval to draw: the mean alone where it has none (one seed)."""
    if row["ci_low"] is None:
        return row["test_accuracy"], row["test_accuracy"]
    return row["ci_low"], row["ci_high"]


def _accuracy_axis(ax, rows: list[dict]) -> None:
    """The intervals' range, within [0, 1]: a t-interval over few seeds can reach beyond what accuracy can be."""
    low, high = min(_band(r)[0] for r in rows), max(_band(r)[1] for r in rows)
    pad = 0.02 * max(high - low, 0.01)
    ax.set_ylim(max(0.0, low - pad), min(1.0, high) + pad)


def check_study(where: Path, results: dict) -> None:
    """study.json's shape as the report reads it (points by name, each with its numbers; the data set and the
    configuration as objects): a damaged file is one line naming the field, not an AttributeError."""
    fields = Fields(where, results, "the file is damaged; run the study again")
    if "kind" in fields:
        fields.choice("kind", ("shots", "freeze"))
    for key in ("dataset", "config"):
        if key in fields:
            fields.sub(key)
    if "target_class_sizes" in results.get("dataset", {}):
        fields.sub("dataset").integers("target_class_sizes")
    if results.get("points") is None:  # a study interrupted before its first point
        return
    points = fields.sub("points")
    for name in points.obj:
        point = points.sub(name)
        point.text("arm")
        point.integer("seed")
        for key in ("shots", "cut"):
            if point.get(key) is not None:
                point.integer(key)
        point.number("test_accuracy", 0, 1)
        point.number("test_loss")
        point.number("seconds", low=0)
        for key in ("train_samples", "steps"):
            point.integer(key)


def write_study_report(run_dir: Path, results: dict) -> Path:
    """The study's report.html: the plot, the findings, the table per arm and x, every point."""
    check_study(run_dir / STUDY_FILE, results)
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

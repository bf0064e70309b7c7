"""A rank's table as the console, rank.json, the bar chart and report.html show it, and its one-line
recommendation; drawn from results.json's rows alone."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

from matplotlib.figure import Figure
from rich.table import Table

from .figures import tight, title_axes
from .html import Image, figure_image

SCORE_NAMES = {"logme": "LogME", "knn": "kNN accuracy", "probe": "probe accuracy", "verified": "verified accuracy"}
CONTROL_COLOR, CANDIDATE_COLOR = "#9ca3af", "#2563eb"


@dataclass(frozen=True)
class RankRow:
    """One candidate (a backbone, or one of its stages) in the ranked table."""

    rank: int
    name: str
    backbone: str
    weights: str
    layer: str | None
    control: bool
    logme: float | None  # None: absent, the reason in `absent`
    knn: float | None
    probe: float | None
    verified: float | None  # the trained head's validation accuracy (--verify)
    feature_size: int
    params: int
    seconds: dict[str, float]  # feature pass (this candidate's backbone), logme, knn, probe, verify
    absent: dict[str, str]  # score -> why it could not be computed
    logme_at_bound: int  # classes whose evidence has no maximum inside LogME's bounds (the features separate them)
    failed: bool  # the verified head ended no better than always answering the most common class

    @classmethod
    def of(cls, rank: int, row: dict) -> RankRow:
        verified = row.get("verified")
        seconds = {"feature_pass": row["feature_pass"]["seconds"], **row["seconds"]}
        if verified is not None:
            seconds["verify"] = verified["seconds"]
        scores = row["scores"]
        return cls(rank, row["name"], row["backbone"], row["weights"], row.get("layer"), row["control"],
                   scores.get("logme"), scores.get("knn"), scores.get("probe"),
                   None if verified is None else verified["accuracy"], row["feature_size"], row["params"], seconds,
                   dict(row.get("absent") or {}), int((row.get("logme") or {}).get("classes_at_bound", 0)),
                   bool(verified and verified.get("failed")))

    def to_dict(self) -> dict:
        return asdict(self)


def recommendation(table: list[RankRow]) -> str:
    """The first candidate, and how close the second is on every score."""
    first = table[0]
    if len(table) == 1:
        return f"{first.name} is the only candidate scored."
    second = table[1]
    both = [s for s in ("logme", "knn", "probe") if getattr(first, s) is not None and getattr(second, s) is not None]
    if not both:
        return f"Start from {first.name}; no score is present for both it and {second.name}."
    ahead = [SCORE_NAMES[s] for s in both if getattr(second, s) > getattr(first, s)]
    gaps = ", ".join(f"LogME {first.logme - second.logme:+.3f}" if s == "logme"
                     else f"{'kNN' if s == 'knn' else 'probe'} {100 * (getattr(first, s) - getattr(second, s)):+.1f} points"
                     for s in both)
    verdict = (f"close: {second.name} is ahead on {', '.join(ahead)}" if ahead
               else f"{first.name} is ahead on every score" + ("" if len(both) == 3 else " present for both"))
    return f"Start from {first.name}; next is {second.name} ({gaps} in favour of the first; {verdict})."


def rank_table(table: list[RankRow], taus: dict | None = None, taus_with_failed: dict | None = None) -> Table:
    """The console's ranked table (an absent score as a dash, its reason below); with --verify, the trained
    accuracy (a failed head marked) and each score's Kendall tau (and with the failed heads, when any)."""
    verified = any(r.verified is not None for r in table)
    out = Table(title="candidates, best first (by mean rank over LogME, kNN and probe)", title_justify="left")
    for column in ("#", "candidate", "LogME", "kNN acc", "probe acc", *(["verified acc"] if verified else []),
                   "features", "params", "pass s", "scores s"):
        out.add_column(column, justify="left" if column == "candidate" else "right")
    for r in table:
        out.add_row(str(r.rank), r.name, shown(r.logme) + ("*" if r.logme_at_bound else ""), shown(r.knn),
                    shown(r.probe), *([shown(r.verified) + (" failed" if r.failed else "")] if verified else []),
                    f"{r.feature_size:,}",
                    f"{r.params / 1e6:.1f}M", f"{r.seconds['feature_pass']:.1f}",
                    f"{sum(r.seconds[s] for s in ('logme', 'knn', 'probe')):.2f}")
    notes = [f"{r.name}: {s} absent: {why}" for r in table for s, why in r.absent.items()]
    if any(r.logme_at_bound for r in table):
        notes.append("* LogME at its bound for some classes: the features separate them, the evidence has no "
                     "finite maximum, and the score is its value at the stated bound (README: rank)")
    if taus:
        notes.append(("Kendall tau against the verified accuracy, failed heads left out: " if taus_with_failed else
                      "Kendall tau against the verified accuracy: ") + tau_line(taus))
    if taus_with_failed:
        notes.append("with the failed heads: " + tau_line(taus_with_failed))
    out.caption = "\n".join(notes) or None
    return out


def shown(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def tau_line(taus: dict) -> str:
    return ", ".join(f"{SCORE_NAMES.get(s, 'ranking')} {_tau(t)}" for s, t in taus.items())


def _tau(t: float | None) -> str:
    return "undefined (ties, or fewer than two candidates)" if t is None else f"{t:+.3f}"


def rank_figure(table: list[RankRow]) -> Figure:
    """One panel of horizontal bars per score (and the verified accuracy), candidates best first; the
    random-weights control in grey."""
    metrics = ["logme", "knn", "probe"] + (["verified"] if any(r.verified is not None for r in table) else [])
    fig = Figure(figsize=(3.3 * len(metrics) + 1.5, 0.38 * len(table) + 1.3))
    axes = fig.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    names = [r.name for r in table]
    colors = [CONTROL_COLOR if r.control else CANDIDATE_COLOR for r in table]
    for ax, metric in zip(axes, metrics, strict=True):
        raw = [getattr(r, metric) for r in table]
        values = [0.0 if v is None else v for v in raw]
        ax.barh(range(len(table)), values, color=colors)
        for y, (v, given) in enumerate(zip(values, raw, strict=True)):
            ax.text(v, y, " absent" if given is None else f" {v:.3f}", va="center", fontsize=7)
        title_axes(ax, SCORE_NAMES[metric], fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        if metric != "logme":
            ax.set_xlim(0, 1.15)
    axes[0].set_yticks(range(len(table)), names, fontsize=8)
    axes[0].invert_yaxis()
    tight(fig)
    return fig


@dataclass(frozen=True)
class RankView:
    """What rank.html.j2 shows."""

    title: str
    origin: str
    created: str
    status: dict | None
    classes: list[str]
    train_samples: int
    val_samples: int
    table: list[RankRow]
    recommendation: str
    taus: list[tuple[str, str]]
    taus_with_failed: list[tuple[str, str]]
    skipped: list[dict]
    chart: Image | None
    config: list[tuple[str, str]]
    environment: list[tuple[str, str]]


def rank_view(results: dict, status: dict | None, flatten: Callable[[dict], list[tuple[str, str]]]) -> RankView:
    """The page of a rank from its results.json (a rank still running shows the candidates scored so far)."""
    from ..scores import order_by_scores

    rows = results.get("candidates", [])
    table = [RankRow.of(i + 1, rows[p]) for i, p in enumerate(order_by_scores(rows))] if rows else []
    dataset = results.get("dataset", {})
    return RankView(
        title=f"Which backbone for {dataset.get('origin', 'the data')}?", origin=str(dataset.get("origin", "")),
        created=results.get("created", ""), status=status, classes=list(dataset.get("class_names", [])),
        train_samples=dataset.get("train_samples", 0), val_samples=dataset.get("val_samples", 0), table=table,
        recommendation=results.get("recommendation") or (recommendation(table) if table else ""),
        taus=[(SCORE_NAMES.get(s, "the ranking (mean rank)"), _tau(t)) for s, t in results.get("kendall_tau", {}).items()],
        taus_with_failed=[(SCORE_NAMES.get(s, "the ranking (mean rank)"), _tau(t))
                          for s, t in (results.get("kendall_tau_with_failed") or {}).items()],
        skipped=results.get("skipped", []),
        chart=figure_image(rank_figure(table), "scores per candidate") if table else None,
        config=flatten(results.get("config", {})), environment=flatten(results.get("environment", {})))

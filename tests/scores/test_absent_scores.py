"""Absent scores (None, with a reason) are ranked last and shown as dashes; Kendall's tau skips them; a failed head
is flagged and left out of the taus, which are also given with it."""

import math

import torch

from transferkit.experiments.rank import kendall_taus
from transferkit.reporting.rank import RankRow, rank_table, recommendation
from transferkit.scores import order_by_scores, score_features


def row(name, logme, knn, probe, verified=None, failed=False):
    r = {"name": name, "backbone": "b", "weights": "imagenet", "control": False, "feature_size": 4, "params": 10,
         "feature_pass": {"seconds": 0.1}, "scores": {"logme": logme, "knn": knn, "probe": probe},
         "seconds": {"logme": 0.0, "knn": 0.0, "probe": 0.0},
         "absent": {s: "came out nan" for s, v in (("logme", logme), ("knn", knn), ("probe", probe)) if v is None}}
    if verified is not None:
        r["verified"] = {"accuracy": verified, "seconds": 0.1, "failed": failed}
    return r


def test_an_absent_score_ranks_last_and_never_crashes():
    rows = [row("a", None, 0.5, 0.5), row("b", 1.0, 0.6, 0.6), row("c", None, None, None)]
    assert order_by_scores(rows) == [1, 0, 2]
    table = [RankRow.of(i + 1, rows[p]) for i, p in enumerate(order_by_scores(rows))]
    text = recommendation(table)
    assert "nan" not in text.lower() and text.startswith("Start from b; next is a (kNN")
    assert "LogME" not in text.split("(")[1]  # a's LogME is absent: no gap is given for it
    from rich.console import Console
    console = Console(width=200, record=True)
    console.print(rank_table(table))
    shown = console.export_text()
    assert "a: logme absent: came out nan" in shown and "nan" not in shown.replace("came out nan", "")


def test_kendall_skips_absent_scores_and_failed_heads():
    rows = [row("a", 3.0, 0.9, 0.9, 0.9), row("b", 2.0, 0.8, None, 0.8), row("c", 1.0, 0.95, 0.1, 0.1, failed=True)]
    taus = kendall_taus(rows)
    assert taus["logme"] == 1.0 and taus["knn"] == 1.0  # a and b only: c's head failed
    assert taus["probe"] is None  # one candidate with a probe and a trained head
    with_failed = kendall_taus(rows, with_failed=True)
    assert with_failed["logme"] == 1.0 and with_failed["knn"] == -1 / 3
    assert all(t is None or math.isfinite(t) for t in (*taus.values(), *with_failed.values()))


def test_non_finite_features_give_absent_scores_with_the_reason():
    train = torch.randn(20, 4)
    train[3, 1] = float("nan")
    scored = score_features(train, torch.arange(20) % 2, torch.randn(6, 4), torch.arange(6) % 2)
    assert scored["scores"] == {"logme": None, "knn": None, "probe": None}
    assert "NaN or Infinity" in scored["absent"]["logme"]


def test_separable_features_give_a_finite_flagged_logme():
    y = torch.arange(30) % 3
    train = torch.nn.functional.one_hot(y, 3).float().repeat(1, 20) + 0.001 * torch.randn(30, 60)
    scored = score_features(train, y, train[:9], y[:9])
    assert math.isfinite(scored["scores"]["logme"]) and scored["logme"]["classes_at_bound"] == 3

"""An audit's files: audit.json (every finding, strict JSON), issues.csv (one row per file to look at, with an
action a user can edit) and report.html (image grids of each kind of finding), written all or none."""

from __future__ import annotations

import base64
import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from ..atomic import write_atomic_files
from ..jsonfile import strict_json
from .html import Image, render

AUDIT_FILE, ISSUES_FILE, AUDIT_REPORT_FILE = "audit.json", "issues.csv", "report.html"
ISSUE_COLUMNS = ("kind", "path", "split", "label", "suggested", "score", "partner", "action")
SHOWN = 24  # images per kind in the report; every finding is in audit.json and issues.csv
THUMB_PX = 96


def issue_rows(findings: dict) -> list[dict]:
    """issues.csv's rows: the copy to leave out of each leak and duplicate (action exclude), the images to look at
    (label issues, outliers, near duplicates within a split: action review) and the unreadable files."""
    rows: list[dict] = []
    leaked = set()

    def row(kind: str, image: dict, action: str, score: float | str = "", suggested: str = "", partner: str = ""):
        rows.append({"kind": kind, "path": image["path"], "split": image["split"], "label": image.get("label", ""),
                     "suggested": suggested, "score": score, "partner": partner, "action": action})

    for leak in findings["leakage"]:
        first, second = leak["images"]
        row(f"leakage_{leak['kind']}", second, "exclude", leak["feature_similarity"], partner=first["path"])
        leaked.add(second["path"])
    for group in findings["exact_duplicates"]:
        for image in group[1:]:
            if image["path"] not in leaked:
                row("exact_duplicate", image, "exclude", 1.0, partner=group[0]["path"])
    for pair in findings["near_duplicates"]:
        first, second = pair["images"]
        if second["path"] not in leaked and first["path"] not in leaked:
            row("near_duplicate", second, "review", pair["feature_similarity"], partner=first["path"])
    for issue in findings["label_issues"]:
        row("label_issue", issue, "review", issue["label_quality"], suggested=issue["suggested"])
    for outlier in findings["outliers"]:
        row("outlier", outlier, "review", outlier["score"], partner=outlier["neighbours"][0])
    for bad in findings["unreadable"]:
        row("unreadable", bad, "exclude", bad["reason"])
    return rows


def write_audit(out: Path, results: dict, paths: list[str], pixels: np.ndarray) -> list[Path]:
    """audit.json, issues.csv and report.html in `out` (created), all or none; `pixels` (of `paths`, in order) give
    the report's thumbnails."""
    out.mkdir(parents=True, exist_ok=True)
    text = strict_json(results, what=str(out / AUDIT_FILE))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, ISSUE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(issue_rows(results["findings"]))
    html = audit_page(results, dict(zip(paths, pixels, strict=True)))
    files = {out / AUDIT_FILE: text, out / ISSUES_FILE: buffer.getvalue(), out / AUDIT_REPORT_FILE: html}
    write_atomic_files({p: (lambda tmp, t=t: tmp.write_text(t, encoding="utf-8")) for p, t in files.items()})
    return list(files)


def audit_page(results: dict, pixels: dict[str, np.ndarray]) -> str:
    """report.html of an audit: its counts, facts, and a grid of images for each kind of finding."""
    cache: dict[str, Image] = {}

    def thumb(path: str) -> Image | None:
        if path not in pixels:
            return None
        if path not in cache:
            img = PILImage.fromarray(pixels[path])
            img.thumbnail((THUMB_PX, THUMB_PX))
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            cache[path] = Image("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), path)
        return cache[path]

    f = results["findings"]
    return render("audit.html.j2", report=results, thumb=thumb, shown=SHOWN,
                  kinds=[("leakage", "Leakage across splits"), ("exact_duplicates", "Exact duplicates"),
                         ("near_duplicates", "Near duplicates"), ("label_issues", "Likely label errors"),
                         ("outliers", "Outliers"), ("unreadable", "Unreadable files")],
                  total=sum(len(v) for v in f.values()))


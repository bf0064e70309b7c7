"""`--exclude issues.csv`: the image files a user chose to leave out, read from the list `transferkit audit` writes
(or any CSV with a `path` column; with an `action` column, only the rows whose action is `exclude`)."""

from __future__ import annotations

import csv
from pathlib import Path

from ..errors import UserError


def read_exclusions(path: str | Path) -> frozenset[str]:
    """The paths (inside the data set, as audit's issues.csv names them) to leave out."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
            columns = set(rows[0]) if rows else set()
    except OSError as e:
        raise UserError(f"--exclude {path}: cannot be read ({e.strerror or e}); give the issues.csv of an audit") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"--exclude {path}: not a CSV file ({str(e)[:80]}); give the issues.csv of an audit") from None
    if rows and "path" not in columns:
        raise UserError(f"--exclude {path}: no 'path' column; give the issues.csv of an audit (kind,path,...,action)")
    keep = "action" in columns
    return frozenset(r["path"] for r in rows if r.get("path") and
                     (not keep or (r.get("action") or "").strip().lower() == "exclude"))

"""status.json: whether a run is running, interrupted, failed (with the error) or complete; updated atomically."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from .results import write_text_atomic

STATUS_FILE = "status.json"


def write_status(run_dir: Path, status: str, **details: object) -> None:
    record = {"status": status, "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"), **details}
    write_text_atomic(run_dir / STATUS_FILE, json.dumps(record, indent=2) + "\n")


def read_status(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None

"""status.json: whether a run is running, interrupted, failed (with the error) or complete; updated atomically."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from ..errors import Interrupted
from .results import strict_json, write_text_atomic

STATUS_FILE = "status.json"


def write_status(run_dir: Path, status: str, **details: object) -> None:
    record = {"status": status, "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"), **details}
    write_text_atomic(run_dir / STATUS_FILE, strict_json(record) + "\n")


STATUSES = ("running", "interrupted", "failed", "complete")


def read_status(run_dir: Path) -> dict | None:
    """status.json, or None where there is none or it is not an object with a known `status` (damaged)."""
    try:
        status = json.loads((run_dir / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(status, dict) or status.get("status") not in STATUSES:
        return None
    return status


@contextlib.contextmanager
def recording_status(run_dir: Path | None) -> Iterator[None]:
    """Training inside: status.json becomes interrupted (Ctrl-C) or failed (with the error) when it ends early."""
    try:
        yield
    except Interrupted as stop:
        stop.run_dir = run_dir
        if run_dir is not None:
            write_status(run_dir, "interrupted", detail=str(stop))
        raise
    except KeyboardInterrupt:
        if run_dir is not None:
            write_status(run_dir, "interrupted", detail="stopped at once by a second Ctrl-C; resume from the last epoch")
        raise
    except BaseException as e:
        if run_dir is not None:
            write_status(run_dir, "failed", **_phase_of(run_dir), error=f"{type(e).__name__}: {e}")
        raise


def _phase_of(run_dir: Path) -> dict:
    """The phase the run was in when it stopped, as status.json said ({} when it did not)."""
    try:
        phase = json.loads((run_dir / STATUS_FILE).read_text(encoding="utf-8")).get("phase")
    except (OSError, ValueError, AttributeError):
        return {}
    return {"phase": phase} if isinstance(phase, str) else {}

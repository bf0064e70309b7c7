"""status.json: whether a run is running, interrupted, failed (with the error) or complete; updated atomically.

A running run records its process (host and pid), so a reader can tell a run at work from one whose process was
killed without a word (kill -9, a lost machine): that one reads as `stale`. A file that is not a status record
reads as `damaged`. Neither is ever written; both are what a reader is told instead of a status that is not true.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from ..errors import Interrupted
from ..jsonfile import read_json, strict_json
from .results import write_text_atomic

STATUS_FILE = "status.json"
STATUSES = ("running", "interrupted", "failed", "complete")  # what is written
READ_ONLY_STATUSES = ("stale", "damaged")  # what a reader may be told besides


def write_status(run_dir: Path, status: str, **details: object) -> None:
    record = {"status": status, "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"), **details}
    if status == "running":
        record.update(host=socket.gethostname(), pid=os.getpid())
    path = run_dir / STATUS_FILE
    write_text_atomic(path, strict_json(record, what=str(path)) + "\n")


def read_status(run_dir: Path) -> dict | None:
    """status.json as a dict, None where there is none; `damaged` (with `detail`) where it is not a status record,
    `stale` where it says running but its process on this host is gone."""
    path = Path(run_dir) / STATUS_FILE
    if not path.exists():
        return None
    try:
        status = read_json(path)
    except (OSError, ValueError) as e:
        return {"status": "damaged", "detail": f"{path} cannot be read ({type(e).__name__})"}
    if not isinstance(status, dict) or status.get("status") not in STATUSES:
        got = status.get("status") if isinstance(status, dict) else type(status).__name__
        return {"status": "damaged", "detail": f"{path} is not a status record (status {str(got)[:40]!r})"}
    if status["status"] == "running" and _process_gone(status):
        return {**status, "status": "stale", "detail": (
            f"status.json says running (phase {status.get('phase', '?')}), but its process {status['pid']} is gone: "
            "it was killed without a word; --resume continues from the last checkpoint")}
    return status


def _process_gone(status: dict) -> bool:
    """Whether the process that wrote a running status is known to have ended (same host, no such pid)."""
    pid = status.get("pid")
    if status.get("host") != socket.gethostname() or not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False  # another machine's run, or a status from before pids were recorded: cannot tell
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False
    return _zombie(pid)


def _zombie(pid: int) -> bool:
    """A killed child not yet reaped by its parent still has a pid; /proc says it is a zombie (Linux)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


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
        phase = read_json(run_dir / STATUS_FILE).get("phase")
    except (OSError, ValueError, AttributeError):
        return {}
    return {"phase": phase} if isinstance(phase, str) else {}

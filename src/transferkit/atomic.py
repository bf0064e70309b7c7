"""Writing a file so that it is either the old version or the whole new one, never half of either."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from safetensors import SafetensorError

from .errors import UserError


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)`, fsync it, rename it over `path`.

    A failed write (a full disk) leaves the previous file whole, removes the temporary and raises a
    UserError that says so.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, SafetensorError) as e:
        tmp.unlink(missing_ok=True)
        reason = getattr(e, "strerror", None) or str(e).splitlines()[0]
        raise UserError(f"{path}: cannot write ({reason}); the previous version is kept. "
                        "Free disk space, then resume the run with --resume.") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

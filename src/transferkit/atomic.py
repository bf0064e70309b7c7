"""Writing files so that each is either the old version or the whole new one, never half of either; and a
group of files (a model and its sidecar) all old or all new."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from safetensors import SafetensorError

from .errors import UserError, first_line

Writer = Callable[[Path], None]  # writes the file at the path it is given


def write_atomic(path: Path, write: Writer) -> None:
    """Call `write(tmp)`, fsync it, rename it over `path`.

    A failed write (a full disk, a folder without write permission) leaves the previous file whole, removes
    the temporary and raises a UserError that says so, with advice for its cause (`cannot_write`).
    """
    write_atomic_files({Path(path): write})


def write_atomic_files(writes: dict[Path, Writer]) -> None:
    """write_atomic for several files at once: all are written to temporaries first, then renamed; if any step
    fails, every file is left as it was (the old versions, kept by hard links, are put back)."""
    paths = [Path(p) for p in writes]
    temps = {p: p.with_name(f".{p.name}.{os.getpid()}.tmp") for p in paths}
    backups: dict[Path, Path] = {}
    renamed: list[Path] = []
    current = paths[0]
    try:
        for current, write in zip(paths, writes.values(), strict=True):
            write(temps[current])
            with open(temps[current], "rb") as f:
                os.fsync(f.fileno())
        if len(paths) > 1:  # one file needs no backup: os.replace is the atomic step
            for current in paths:
                if current.exists():
                    backups[current] = current.with_name(f".{current.name}.{os.getpid()}.old")
                    _keep_copy(current, backups[current])
        for current in paths:
            os.replace(temps[current], current)
            renamed.append(current)
    except (OSError, SafetensorError) as e:
        _undo(renamed, backups)
        existed = current.exists() or current in backups
        raise UserError(cannot_write(current, e, existed)) from None
    except BaseException:
        _undo(renamed, backups)
        raise
    finally:
        for path in [*temps.values(), *backups.values()]:
            path.unlink(missing_ok=True)


def _keep_copy(path: Path, backup: Path) -> None:
    """`backup` the same file as `path`: a hard link (no copy), or a copy where the file system has none."""
    try:
        os.link(path, backup)
    except OSError:
        shutil.copyfile(path, backup)


def _undo(renamed: list[Path], backups: dict[Path, Path]) -> None:
    """Put back what the files were before a group write that failed part way."""
    for path in renamed:
        if path in backups:
            os.replace(backups[path], path)
        else:
            path.unlink(missing_ok=True)


def cannot_write(path: Path, e: BaseException, existed: bool = True) -> str:
    """The one-line message for a failed write, its advice chosen by the cause (errno)."""
    code = getattr(e, "errno", None)
    reason = getattr(e, "strerror", None) or first_line(e)
    if code is None and "No space left" in reason:  # safetensors' errors carry no errno
        code = errno.ENOSPC
    kept = "the previous version is kept" if existed else "nothing was written"
    if code in (errno.ENOSPC, errno.EDQUOT):
        advice = "free disk space, then run the command again (a run: with --resume)"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        advice = f"check the permissions of {path.parent} or write elsewhere, then run the command again"
    else:  # the OS's own words say it best
        return f"{path}: cannot write ({reason}); {kept}."
    return f"{path}: cannot write ({reason}); {kept}. {advice[0].upper()}{advice[1:]}."

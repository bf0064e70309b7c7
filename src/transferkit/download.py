"""Downloading a file into a cache, in one piece or not at all."""

from __future__ import annotations

import http.client
import urllib.request
from pathlib import Path

from .errors import UserError


def download(url: str, path: Path, timeout: float, if_offline: str) -> None:
    """Fetch `url` into `path` through a temporary file; without network, UserError(`if_offline`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as f:
            while chunk := response.read(1 << 20):
                f.write(chunk)
        tmp.replace(path)
    except (OSError, http.client.HTTPException):  # no network, refused, timed out, or cut off midway
        tmp.unlink(missing_ok=True)
        raise UserError(if_offline) from None

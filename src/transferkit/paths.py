"""Where transferkit keeps what it can recompute: decoded image folders, frozen features, converted weights."""

from __future__ import annotations

from pathlib import Path

import platformdirs


def cache_dir() -> Path:
    """transferkit's per-user cache; XDG_CACHE_HOME (or the platform's equivalent) moves it."""
    return Path(platformdirs.user_cache_dir("transferkit", appauthor=False))

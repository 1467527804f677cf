"""Settings read from the environment."""

from __future__ import annotations

import os


def default_threads() -> int | None:
    """SHANSHUI_THREADS, else let the runtime decide."""
    v = os.environ.get("SHANSHUI_THREADS")
    return int(v) if v and v.isdigit() and int(v) > 0 else None

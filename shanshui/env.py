"""Settings read from the environment."""

from __future__ import annotations

from shanshui.limits import env_threads


def default_threads() -> int | None:
    """SHANSHUI_THREADS, else let the runtime decide; a value that is no thread count is an error, never ignored."""
    return env_threads()

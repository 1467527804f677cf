"""Finding the system's Chromium for Playwright (no `playwright install`, no downloads)."""

from __future__ import annotations

import os
import shutil

import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_path() -> str | None:
    found = os.environ.get("SHANSHUI_CHROMIUM")
    if found:
        return found
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def require_chromium() -> str:
    """The browser's path; a skip with the reason when there is none, a failure in CI (CI must run the test)."""
    path = chromium_path()
    if path is None:
        why = f"no Chromium on PATH ({', '.join(CANDIDATES)}) and SHANSHUI_CHROMIUM unset; `apt-get install chromium`"
        if os.environ.get("CI"):
            pytest.fail(why + " (.ci/run installs it)")
        pytest.skip(why)
    return path


def launch(playwright, path: str):
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
    return playwright.chromium.launch(executable_path=path, headless=True, args=["--no-sandbox", "--disable-gpu"])

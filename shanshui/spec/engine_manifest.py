"""The engine folder's manifest (engines.json): which TensorRT engine is which, and which export it was built from.

Torch- and TensorRT-free: folder detection and the runtime read it; engines/build.py writes it.
"""

from __future__ import annotations

import json
from pathlib import Path

from shanshui.errors import ShanshuiError

ENGINE_MANIFEST = "engines.json"
FORMAT_VERSION = 1


def read_engine_manifest(folder: Path) -> dict | None:
    path = Path(folder) / ENGINE_MANIFEST
    if not path.is_file():
        return None
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ShanshuiError(f"{path} is corrupt; delete {folder} and run `shanshui engine build` again") from None
    if m.get("format_version") != FORMAT_VERSION:
        raise ShanshuiError(f"{path} has format {m.get('format_version')}, this shanshui reads {FORMAT_VERSION}; "
                            f"run `shanshui engine build` again")
    return m

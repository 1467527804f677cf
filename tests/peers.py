"""The second Python environment some tests run a check in: transformers 4.57 + Optimum (the bench's Optimum venv).

SHANSHUI_OPTIMUM_PYTHON names its interpreter; otherwise the bench's venv is used when it is ready. Tests that need it
skip without it: CI builds it (see .github or README), a laptop may not have it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest


def optimum_python() -> str | None:
    env = os.environ.get("SHANSHUI_OPTIMUM_PYTHON")
    if env:
        return env if Path(env).is_file() else None
    from shanshui.bench.venv import optimum_venv

    info = optimum_venv(None, create=False)
    return info["python"] if Path(info["dir"], "shanshui-bench-venv.json").is_file() else None


def run_in_peer(code: str, *args: str, timeout: float = 600) -> dict:
    """Run `code` in the peer interpreter; it prints one JSON object on its last stdout line."""
    py = optimum_python()
    if py is None:
        pytest.skip("no transformers-4.57/Optimum venv (set SHANSHUI_OPTIMUM_PYTHON or run `shanshui bench --peers optimum`)")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "1")
    proc = subprocess.run([py, "-c", code, *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])

"""The Optimum peer's own virtual environment, made on request (`shanshui bench --peers optimum`).

Optimum's ONNX Runtime diffusion pipeline pins transformers < 4.58 and an older diffusers, which cannot share an
environment with shanshui's, so it lives in its own venv with a pinned set known to install together:
    torch==2.13.0, then optimum-onnx[onnxruntime]==0.1.0, optimum==2.1.0, transformers==4.57.*, diffusers<0.36
A marker file, written last, says the venv is complete; a venv without it is rebuilt. pip's log stays beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

TORCH_PIN = "torch==2.13.0"
OPTIMUM_PINS = ("optimum-onnx[onnxruntime]==0.1.0", "optimum==2.1.0", "transformers==4.57.*", "diffusers<0.36")
MARKER = "shanshui-bench-venv.json"
CHECK = "import optimum.onnxruntime, diffusers, onnxruntime, torch; from optimum.onnxruntime import ORTStableDiffusionPipeline"


def default_venv_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "shanshui" / "bench-venvs"


def venv_python(folder: Path) -> Path:
    return folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _ready(folder: Path) -> bool:
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return marker.get("pins") == [TORCH_PIN, *OPTIMUM_PINS] and venv_python(folder).is_file()


def optimum_venv(root: Path | None, create: bool, timeout_s: float = 1800, on_event: Callable[[str], None] = lambda s: None) -> dict:
    """{"ready", "python", "dir", "reason", "log"}: ready to run the Optimum worker, or why not."""
    folder = Path(root or default_venv_root()) / "optimum"
    log = folder.parent / "optimum-install.log"
    info = {"ready": False, "python": str(venv_python(folder)), "dir": str(folder), "reason": None, "log": str(log)}
    if _ready(folder):
        if not create:
            info["reason"] = "not requested (add --peers optimum; its venv is ready at " + str(folder) + ")"
            return info
        return {**info, "ready": True}
    if not create:
        info["reason"] = f"not requested (--peers optimum builds its own venv at {folder}, a few minutes, once)"
        return info
    if folder.exists():
        shutil.rmtree(folder)  # an incomplete earlier attempt
    folder.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    steps = [
        ("creating the venv", [sys.executable, "-m", "venv", str(folder)]),
        (f"installing {TORCH_PIN}", [str(venv_python(folder)), "-m", "pip", "install", "--quiet", TORCH_PIN]),
        ("installing " + ", ".join(OPTIMUM_PINS), [str(venv_python(folder)), "-m", "pip", "install", "--quiet", *OPTIMUM_PINS]),
        ("checking the imports", [str(venv_python(folder)), "-c", CHECK]),
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    with open(log, "w", encoding="utf-8") as f:
        for what, cmd in steps:
            on_event(f"Optimum venv: {what}")
            f.write(f"$ {' '.join(cmd)}\n")
            f.flush()
            try:
                proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL,
                                      timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                info["reason"] = f"creating the Optimum venv timed out while {what} (after {timeout_s:.0f} s); see {log}"
                return info
            except OSError as e:
                info["reason"] = f"creating the Optimum venv failed while {what}: {e.strerror or e}"
                return info
            if proc.returncode != 0:
                info["reason"] = f"creating the Optimum venv failed while {what} (exit {proc.returncode}); see {log}"
                return info
    freeze = subprocess.run([str(venv_python(folder)), "-m", "pip", "list", "--format=json"], capture_output=True, text=True, env=env)
    versions = {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(freeze.stdout or "[]")}
    keep = ("optimum", "optimum-onnx", "onnxruntime", "diffusers", "transformers", "torch", "huggingface-hub")
    (folder / MARKER).write_text(json.dumps({"pins": [TORCH_PIN, *OPTIMUM_PINS], "versions": {k: versions.get(k) for k in keep},
                                             "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2), encoding="utf-8")
    return {**info, "ready": True}

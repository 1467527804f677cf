"""The peers' own virtual environments, made on request (`shanshui bench --peers optimum` / `--peers sdcpp`).

Optimum's ONNX Runtime diffusion pipeline pins transformers < 4.58 and an older diffusers, which cannot share an
environment with shanshui's, so it lives in its own venv with a pinned set known to install together:
    torch==2.13.0, then optimum-onnx[onnxruntime]==0.1.0, optimum==2.1.0, transformers==4.57.*, diffusers<0.36
stable-diffusion.cpp comes through its PyPI binding, stable-diffusion-cpp-python==0.4.7, an sdist that compiles the
vendored C++ (CPU backend) during pip install: minutes of compiling, once. The package's own defaults are kept; its
ggml builds with GGML_NATIVE=ON (-march=native), so that venv is for this machine's CPU only (it stays in this
machine's cache). CMAKE_BUILD_PARALLEL_LEVEL, CMAKE_ARGS and the like pass through from the environment.
A marker file, written last, says a venv is complete; a venv without it (or with other pins) is rebuilt. pip's log
stays beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

TORCH_PIN = "torch==2.13.0"
OPTIMUM_PINS = ("optimum-onnx[onnxruntime]==0.1.0", "optimum==2.1.0", "transformers==4.57.*", "diffusers<0.36")
SDCPP_PINS = ("stable-diffusion-cpp-python==0.4.7", "numpy>=1.24,<3")
MARKER = "shanshui-bench-venv.json"


@dataclass(frozen=True)
class PeerVenv:
    name: str  # folder name under the venv root, and the --peers value
    title: str  # how messages name it
    installs: tuple[tuple[str, ...], ...]  # one pip install per group, in order
    check: str  # python code that must run in the finished venv
    versions: tuple[str, ...]  # distributions whose versions the marker records

    @property
    def pins(self) -> list[str]:
        return [p for group in self.installs for p in group]


OPTIMUM = PeerVenv("optimum", "Optimum", ((TORCH_PIN,), OPTIMUM_PINS),
                   "import optimum.onnxruntime, diffusers, onnxruntime, torch; from optimum.onnxruntime import ORTStableDiffusionPipeline",
                   ("optimum", "optimum-onnx", "onnxruntime", "diffusers", "transformers", "torch", "huggingface-hub"))
SDCPP = PeerVenv("sdcpp", "stable-diffusion.cpp", (SDCPP_PINS,),
                 "import numpy, PIL; from stable_diffusion_cpp import StableDiffusion",
                 ("stable-diffusion-cpp-python", "numpy", "pillow"))
CHECK = OPTIMUM.check


def default_venv_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "shanshui" / "bench-venvs"


def venv_python(folder: Path) -> Path:
    return folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def is_ready(folder: Path, peer: PeerVenv = OPTIMUM) -> bool:
    """The marker is there, names exactly these pins, and the venv's python exists."""
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("pins") == peer.pins and venv_python(folder).is_file()


def write_marker(folder: Path, peer: PeerVenv, versions: dict, build_s: float | None = None) -> None:
    """Written last, through a temp file: a venv with the marker is complete."""
    body = {"pins": peer.pins, "versions": {k: versions.get(k) for k in peer.versions},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "build_s": None if build_s is None else round(build_s, 1)}
    tmp = folder / (MARKER + ".tmp")
    tmp.write_text(json.dumps(body, indent=2), encoding="utf-8")
    os.replace(tmp, folder / MARKER)


def optimum_venv(root: Path | None, create: bool, timeout_s: float = 1800, on_event: Callable[[str], None] = lambda s: None) -> dict:
    """{"ready", "python", "dir", "reason", "log"}: ready to run the Optimum worker, or why not."""
    return peer_venv(OPTIMUM, root, create, timeout_s, on_event)


def sdcpp_venv(root: Path | None, create: bool, timeout_s: float = 3600, on_event: Callable[[str], None] = lambda s: None) -> dict:
    """{"ready", "python", "dir", "reason", "log"}: ready to run the stable-diffusion.cpp worker, or why not."""
    return peer_venv(SDCPP, root, create, timeout_s, on_event)


def peer_venv(peer: PeerVenv, root: Path | None, create: bool, timeout_s: float = 1800,
              on_event: Callable[[str], None] = lambda s: None) -> dict:
    """{"ready", "python", "dir", "reason", "log"} for one peer's venv, built first when `create` and not ready."""
    folder = Path(root or default_venv_root()) / peer.name
    log = folder.parent / f"{peer.name}-install.log"
    info = {"ready": False, "python": str(venv_python(folder)), "dir": str(folder), "reason": None, "log": str(log)}
    if is_ready(folder, peer):
        if not create:
            info["reason"] = f"not requested (add --peers {peer.name}; its venv is ready at {folder})"
            return info
        return {**info, "ready": True}
    if not create:
        info["reason"] = f"not requested (--peers {peer.name} builds its own venv at {folder}, once)"
        return info
    if folder.exists():
        shutil.rmtree(folder)  # an incomplete earlier attempt
    folder.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    python = str(venv_python(folder))
    steps = [("creating the venv", [sys.executable, "-m", "venv", str(folder)])]
    steps += [("installing " + ", ".join(group), [python, "-m", "pip", "install", "--quiet", *group]) for group in peer.installs]
    steps += [("checking the imports", [python, "-c", peer.check])]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    why = _run_steps(peer, steps, env, log, t0 + timeout_s, timeout_s, on_event)
    if why:
        return {**info, "reason": why}
    freeze = subprocess.run([python, "-m", "pip", "list", "--format=json"], capture_output=True, text=True, env=env)
    try:
        listed = json.loads(freeze.stdout or "[]")
    except ValueError:
        listed = []
    versions = {p["name"].lower().replace("_", "-"): p["version"] for p in listed}
    write_marker(folder, peer, versions, time.monotonic() - t0)
    return {**info, "ready": True}


def _run_steps(peer: PeerVenv, steps: list, env: dict, log: Path, deadline: float, timeout_s: float,
               on_event: Callable[[str], None]) -> str | None:
    """Run the build steps into the log; None when all passed, else why not (one line)."""
    with open(log, "w", encoding="utf-8") as f:
        for what, cmd in steps:
            on_event(f"{peer.title} venv: {what}")
            f.write(f"$ {' '.join(cmd)}\n")
            f.flush()
            try:
                proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL,
                                      timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                return f"creating the {peer.title} venv timed out while {what} (after {timeout_s:.0f} s); see {log}"
            except OSError as e:
                return f"creating the {peer.title} venv failed while {what}: {e.strerror or e}"
            if proc.returncode != 0:
                return f"creating the {peer.title} venv failed while {what} (exit {proc.returncode}); see {log}"
    return None

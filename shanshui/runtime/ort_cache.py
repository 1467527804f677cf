"""ONNX Runtime's optimized graph of a model, with its prepacked weights, saved once per machine and memory-mapped on
every later load (ONNX Runtime ≥ 1.21: session.save_external_prepacked_constant_initializers).

A low-memory mode loads the same graphs again and again: a streamed U-Net's parts every step, each component once
per generation. ONNX Runtime spends most of a load on graph rewrites and on re-laying the weights out for its
kernels (prepacking); both depend only on the graph, ONNX Runtime's version and the CPU. Saved after the first load,
the next loads skip them and map the laid-out weights from the file. The shipped int8 U-Net: 1.0 s → 0.2 s to load,
60 → 45 MB resident after it, identical output.

The files live in the user's cache (~/.cache/shanshui/ort-prepacked, or $SHANSHUI_ORT_CACHE; "off" turns it off),
one folder per ONNX Runtime version and CPU (the laid-out weights suit the CPU features they were packed for), one
entry per source graph named by the sha256 the export's manifest records for its files. Only our own exports'
graphs are cached, and only ONNX is read back.
"""

from __future__ import annotations

import hashlib
import json
import os
import functools
import platform
import shutil
from pathlib import Path
from typing import Callable

from shanshui.fsutil import atomic_dir

ENV = "SHANSHUI_ORT_CACHE"
MODEL = "model.onnx"
DATA = MODEL + ".data"
MIN_EXTERNAL_BYTES = 1024  # initializers of this size and more go to the data file (mapped), smaller stay inline


def cache_root() -> Path | None:
    """The cache folder, or None where $SHANSHUI_ORT_CACHE is "off"."""
    env = os.environ.get(ENV, "")
    if env.strip().lower() in ("off", "0", "no", "false"):
        return None
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "shanshui" / "ort-prepacked"


@functools.lru_cache(maxsize=1)
def machine_key() -> str:
    """ONNX Runtime's version and this CPU's model and feature flags, as a short folder name (read once: a streamed
    U-Net loads parts every step)."""
    import onnxruntime as ort

    cpu = ""
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
        cpu = "\n".join(sorted({ln for ln in lines if ln.split(":")[0].strip() in ("flags", "model name", "Features")}))
    except OSError:
        cpu = platform.processor()
    digest = hashlib.sha256(f"{ort.__version__}\n{platform.machine()}\n{cpu}".encode()).hexdigest()[:12]
    return f"ort{ort.__version__}-{platform.machine()}-{digest}"


def entry_key(identity: dict) -> str:
    """The cache entry's name for a graph whose files' hashes (and anything else that shapes it) are `identity`."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


def cached_session(ort, path: Path, identity: dict | None, make_opts: Callable, providers: list[str]):
    """An InferenceSession of `path`, loaded from the cache when its entry is there; else the entry is made first
    (one throwaway load that saves the optimized graph and its prepacked weights) and then loaded. make_opts()
    returns fresh SessionOptions with prepacking on (the entry keeps its level's rewrites); identity None, an
    unwritable cache or a cache turned off: a plain load of `path`."""
    root = cache_root()
    if identity is None or root is None:
        return ort.InferenceSession(str(path), make_opts(), providers=providers)
    entry = root / machine_key() / entry_key(identity)
    if not (entry / MODEL).is_file() and not _save(ort, path, entry, make_opts, providers):
        return ort.InferenceSession(str(path), make_opts(), providers=providers)
    opts = make_opts()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # rewritten already
    try:
        return ort.InferenceSession(str(entry / MODEL), opts, providers=providers)
    except Exception:  # noqa: BLE001 - a damaged entry (disk full, edited): drop it, load the source as usual
        shutil.rmtree(entry, ignore_errors=True)
        return ort.InferenceSession(str(path), make_opts(), providers=providers)


def _save(ort, path: Path, entry: Path, make_opts: Callable, providers: list[str]) -> bool:
    """Write the entry for `path` (into a temporary folder renamed into place); False where it cannot be written."""
    try:
        with atomic_dir(entry) as tmp:
            opts = make_opts()
            opts.optimized_model_filepath = str(tmp / MODEL)
            opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", DATA)
            opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                          str(MIN_EXTERNAL_BYTES))
            opts.add_session_config_entry("session.save_external_prepacked_constant_initializers", "1")
            sess = ort.InferenceSession(str(path), opts, providers=providers)
            del sess
            if not (tmp / MODEL).is_file():
                raise OSError("ONNX Runtime wrote no optimized model")
        return True
    except Exception:  # noqa: BLE001 - a read-only or full disk, an old ONNX Runtime: the plain load still works
        return False

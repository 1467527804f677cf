"""The bench's cache: random-weight model folders and ONNX exports, made on first use in worker processes.

    CACHE/models/<arch>-seed0/              shanshui.train.arch.init_model(arch, ..., seed=0)
    CACHE/exports/<model key>/fp32/         shanshui.export.onnx_export.export_model(..., precision="fp32")
    CACHE/exports/<model key>/fp16|int8/    the same with that precision; its .fp32 reference links to ../fp32
Exports are made at the model's own resolution with max_batch=1 (the graphs' axes are dynamic, so one export serves
every benchmarked size) and without the quality gate: the bench reports image quality against fp32 itself.
The parent never imports torch or onnxruntime for this: each step runs in `python -m shanshui.bench.worker`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from shanshui.bench.plan import ModelRef
from shanshui.errors import ShanshuiError
from shanshui.spec.source import open_source


_HASHES: dict[str, dict[str, str]] = {}


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "shanshui" / "bench"


def ensure_model(ref: ModelRef, cache: Path, run_task: Callable[[dict], dict]) -> Path:
    """The diffusers folder of a model, making a random-weight one for an architecture name."""
    if ref.source is not None:
        return ref.source
    if ref.arch is None:
        raise ShanshuiError(f"{ref.name} has no diffusers source folder")
    out = cache / "models" / ref.key
    if not (out / "model_index.json").is_file():
        res = run_task({"task": "init", "arch": ref.arch, "out": str(out), "seed": 0})
        if not res.get("ok"):
            raise ShanshuiError(f"could not make the {ref.arch} model: {res.get('error')}")
    ref.source = out
    return out


def _current(out: Path, ref: ModelRef, precision: str) -> bool:
    """An export in the cache whose source weights are unchanged (hashed here, torch-free)."""

    try:
        m = json.loads((out / "shanshui_manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if m.get("precision") != precision or set(m.get("components", {})) != {"text_encoder", "unet", "vae_decoder"}:
        return False
    key = str(Path(ref.source).resolve())
    if key not in _HASHES:  # hashing multi-GB weights once per run, not once per precision
        source = open_source(ref.source)
        _HASHES[key] = {c: source.component_hash(f) for c, f in {"text_encoder": "text_encoder", "unet": "unet", "vae_decoder": "vae"}.items()}
    hashes = m.get("source", {}).get("hashes", {})
    return all(hashes.get(c) == h for c, h in _HASHES[key].items()) and all(
        (out / c / f).is_file() for c, e in m["components"].items() for f in e["files"])


def ensure_export(ref: ModelRef, precision: str, cache: Path, run_task: Callable[[dict], dict],
                  on_event: Callable[[str], None] = lambda s: None) -> Path:
    """The export folder of `ref` at `precision`: the one given, or one in the cache (made when absent or stale)."""
    if precision in ref.exports:
        return ref.exports[precision]
    if ref.source is None:
        raise ShanshuiError(f"no {precision} export of {ref.name} and no source folder to make one from")
    root = cache / "exports" / ref.key
    out = root / precision
    if _current(out, ref, precision):
        return out
    if precision != "fp32":
        ensure_export(ref, "fp32", cache, run_task, on_event)  # the reference, made (and checked) once
        out.mkdir(parents=True, exist_ok=True)
        link = out / ".fp32"
        if not link.is_symlink():
            if link.exists():
                import shutil

                shutil.rmtree(link)
            link.symlink_to(Path("..") / "fp32", target_is_directory=True)
    on_event(f"exporting {ref.name} to ONNX {precision} (once, cached in {out})")
    res = run_task({"task": "export", "model_dir": str(ref.source), "out": str(out), "precision": precision,
                    "height": ref.resolution, "width": ref.resolution, "max_batch": 1, "check": False})
    if not res.get("ok"):
        raise ShanshuiError(f"export of {ref.name} to {precision} failed: {res.get('error')}")
    return out


def ensure_engines(export: Path, precision: str, sizes: list[int], run_task: Callable[[dict], dict],
                   on_event: Callable[[str], None] = lambda s: None) -> Path:
    """TensorRT engines for an export of `precision` (EXPORT/engines; reused while current): one static bucket of one
    image per benchmarked size, the batch every row runs."""
    shapes = ",".join(f"1x{s}x{s}" for s in sorted(set(sizes)))
    on_event(f"building or checking TensorRT {precision} engines for {shapes} in {Path(export) / 'engines'}")
    res = run_task({"task": "engines", "export_dir": str(export), "precision": precision, "shapes": shapes})
    if not res.get("ok"):
        raise ShanshuiError(f"TensorRT engine build failed: {res.get('error')}")
    return Path(res["engines"])


def disk_bytes(folder: Path, kind: str) -> dict[str, int]:
    """Bytes on disk per component: ONNX files of an export, safetensors of a diffusers folder (whole VAE)."""
    folder = Path(folder)
    comps = {"text_encoder": "text_encoder", "unet": "unet", "vae_decoder": "vae_decoder"} if kind == "onnx" else \
            {"text_encoder": "text_encoder", "unet": "unet", "vae_decoder": "vae"}
    pattern = "model.onnx*" if kind == "onnx" else "*.safetensors"
    out = {c: sum(p.stat().st_size for p in (folder / sub).glob(pattern) if p.is_file()) for c, sub in comps.items()}
    out["total"] = sum(out.values())
    return out


def component_precisions(export: Path) -> dict[str, str]:
    """What precision each component of an export really is (a component may stay fp32)."""
    try:
        m = json.loads((Path(export) / "shanshui_manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    q = m.get("quantization", {})
    return {c: q.get(c, {}).get("precision", m.get("precision")) for c in m.get("components", {})}

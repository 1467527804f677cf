"""The bench report: environment, one record per row with medians/p90, ratios to diffusers, image quality against
fp32, written as JSON + Markdown + PNG (atomically), and `--compare` of two reports. NumPy and Pillow only.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from shanshui.errors import ShanshuiError
from shanshui.bench.chart import draw_chart
from shanshui.bench.markdown import to_markdown
from shanshui.fsutil import atomic_path, portable_paths, write_bytes_atomic, write_json_atomic
from shanshui.metrics import psnr, ssim
from shanshui.bench.lowmem import add_vs_normal

SCHEMA = "shanshui-bench/1"
FIRST_KEYS = {"text_encoder": "text_encoder_s", "unet_step": "unet_first_step_s", "vae_decode": "vae_decoder_s"}
NOTABLE_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8")
VERSIONED = ("shanshui", "numpy", "onnxruntime", "onnxruntime-gpu", "torch", "diffusers", "transformers", "onnx", "tensorrt")


def _rank(xs: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted xs."""
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


def summarize(samples: list[float] | None) -> dict | None:
    """Median, p10 and p90 (nearest rank) and min of timing samples in seconds; None without samples."""
    if not samples:
        return None
    xs = sorted(float(x) for x in samples)
    return {"median_s": float(np.median(xs)), "p10_s": _rank(xs, 0.1), "p90_s": _rank(xs, 0.9), "min_s": xs[0], "n": len(xs)}


def cpu_info() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, flags


def _git() -> dict:
    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return {"revision": None, "dirty": None}
    if rev.returncode != 0:
        return {"revision": None, "dirty": None}
    return {"revision": rev.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def environment(probe: dict, threads: int | None) -> dict:
    model, flags = cpu_info()
    versions = {}
    for dist in VERSIONED:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    gpu = probe.get("gpu_name")
    if gpu is None and shutil.which("nvidia-smi"):
        q = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
        gpu = q.stdout.strip().splitlines()[0] if q.returncode == 0 and q.stdout.strip() else None
    mem_gb = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            mem_gb = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu": model, "cpu_flags": {f: f in flags for f in NOTABLE_FLAGS}, "cores": os.cpu_count(), "memory_gb": mem_gb,
        "gpu": gpu, "threads": threads, "os": platform.platform(), "python": platform.python_version(),
        "versions": versions, "onnxruntime_providers": probe.get("providers", []), "tensorrt": bool(probe.get("tensorrt")),
        "git": _git(),
    }


def _record(row, res: dict | None) -> dict:
    rec = {"id": row.id, "model": row.model, "size": row.size, "height": row.size, "width": row.size, "runner": row.runner,
           "backend": row.backend, "device": row.device, "precision": row.precision, "status": row.status,
           "reason": row.reason, "pid": None, "load_s": None, "generation": None, "stages": None, "quality": None,
           "speedup_vs_diffusers": None}
    if not res:
        return rec
    rec.update({k: res.get(k) for k in ("pid", "pids", "rounds", "model_dir", "disk_bytes", "component_precisions", "memory_method",
                                         "memory_note", "gpu_memory_method", "modules_loaded", "versions", "steadiness",
                                         "memory", "weight_type")
                if k in res})
    if row.status != "ok":
        return rec
    gen, first = res["generation"], res["generation"]["first"] or {}
    rec.update(load_s=res["load_s"], rss_after_load_mb=res.get("rss_after_load_mb"), peak_rss_load_mb=res.get("peak_rss_load_mb"))
    rec["generation"] = {"first_s": first.get("total_s"), **(summarize(gen["runs_s"]) or {}), "unet_calls": gen.get("unet_calls"),
                         "peak_rss_mb": gen.get("peak_rss_mb"), "gpu_peak_mb": gen.get("gpu_peak_mb"),
                         "split_median_s": {k: (summarize(v) or {}).get("median_s") for k, v in gen["split_s"].items()}}
    rec["unet_step_in_pipeline"] = summarize(gen.get("steps_s"))
    rec["stages"] = {name: {"first_s": first.get(FIRST_KEYS[name]), **(summarize(st["runs_s"]) or {}),
                            "gpu_median_ms": float(np.median(st["gpu_runs_ms"])) if st.get("gpu_runs_ms") else None,
                            "peak_rss_mb": st.get("peak_rss_mb"), "gpu_peak_mb": st.get("gpu_peak_mb"), "inputs": st.get("inputs"),
                            **({"source": st["source"]} if st.get("source") else {})}
                     for name, st in res["stages"].items()}
    return rec


def _unet_s(rec: dict) -> float | None:
    st = (rec.get("stages") or {}).get("unet_step") or {}
    return st.get("median_s") or (rec.get("unet_step_in_pipeline") or {}).get("median_s")


def _unet_p10(rec: dict) -> float | None:
    """The fastest tenth of the direct U-Net calls: noise only ever slows calls down, so this moves least between runs."""
    return ((rec.get("stages") or {}).get("unet_step") or {}).get("p10_s")


def _same_case(a: dict, b: dict) -> bool:
    return a["model"] == b["model"] and a["size"] == b["size"]


def add_ratios(records: list[dict]) -> None:
    """speedup_vs_diffusers: diffusers eager (same model, size, device; same precision, else fp32) ÷ this row."""
    ok = [r for r in records if r["status"] == "ok"]
    for rec in ok:
        bases = [b for b in ok if b["runner"] == "diffusers" and _same_case(b, rec) and b["device"] == rec["device"]]
        base = next((b for b in bases if b["precision"] == rec["precision"]), None) or next((b for b in bases if b["precision"] == "fp32"), None)
        if base is None:
            continue
        g, bg = rec["generation"].get("median_s"), base["generation"].get("median_s")
        u, bu = _unet_s(rec), _unet_s(base)
        rec["speedup_vs_diffusers"] = {"baseline": base["id"], "generation": bg / g if g and bg else None,
                                       "unet_step": bu / u if u and bu else None}


REFERENCE_ORDER = (("shanshui", "onnxruntime", "cpu"), ("shanshui", "torch", "cpu"), ("shanshui", "onnxruntime", "cuda"),
                   ("shanshui", "torch", "cuda"), ("diffusers", "torch", "cpu"))


def _own_reference(rec: dict, records: list[dict], images: dict) -> dict | None:
    """stable-diffusion.cpp draws its own initial noise and has its own tokenizer: its rows are compared only with its
    f16 row of the same case (so the q8_0 row shows what q8_0 costs); the f16 row has no reference."""
    if rec["precision"] == "f16":
        return None
    return next((r for r in records if r["status"] == "ok" and r["runner"] == "sdcpp" and r["precision"] == "f16"
                 and r["device"] == rec["device"] and _same_case(r, rec) and r["id"] in images), None)


def add_quality(records: list[dict], images: dict[str, np.ndarray]) -> None:
    """PSNR/SSIM of each row's image against an fp32 row of the same model, size, prompt, seed and initial noise:
    the same runner/backend/device at fp32 for lower precisions, else the first fp32 row in REFERENCE_ORDER.
    stable-diffusion.cpp rows: against its own f16 row (see _own_reference)."""

    fp32 = [r for r in records if r["status"] == "ok" and r["precision"] == "fp32" and r["id"] in images]
    for rec in records:
        if rec["status"] != "ok" or rec["id"] not in images:
            continue
        if rec["runner"] == "sdcpp":
            _set_quality(rec, _own_reference(rec, records, images), images)
            continue
        cands = [r for r in fp32 if _same_case(r, rec) and r["id"] != rec["id"]]
        same = [r for r in cands if (r["runner"], r["backend"], r["device"]) == (rec["runner"], rec["backend"], rec["device"])]
        ranked = sorted(cands, key=lambda r: next((i for i, k in enumerate(REFERENCE_ORDER) if k == (r["runner"], r["backend"], r["device"])), 99))
        ref = (same or ranked or [None])[0] if rec["precision"] != "fp32" else (ranked or [None])[0]
        _set_quality(rec, ref, images)


def _set_quality(rec: dict, ref: dict | None, images: dict[str, np.ndarray]) -> None:
    if ref is None:
        return
    a, b = images[rec["id"]], images[ref["id"]]
    if a.shape != b.shape:
        return
    p = psnr(a, b)
    rec["quality"] = {"reference": ref["id"], "psnr_db": None if math.isinf(p) else round(p, 2),
                      "ssim": round(ssim(a, b), 4), "identical": math.isinf(p)}


def build_report(config, rows, results: dict[str, dict], probe: dict, optimum: dict, refs, sdcpp: dict | None = None) -> dict:
    records = [_record(r, results.get(r.id)) for r in rows]
    images = {}
    for rec in records:
        path = (results.get(rec["id"]) or {}).get("image")
        if rec["status"] == "ok" and path and Path(path).is_file():
            images[rec["id"]] = np.load(path)
    add_ratios(records)
    add_quality(records, images)
    add_vs_normal(records, images)
    s = config.settings
    return _clean({
        "schema": SCHEMA,
        "environment": environment(probe, s.threads),
        "settings": {"prompt": s.prompt, "seed": s.seed, "steps": s.steps, "guidance": s.guidance, "sampler": "dpmpp_2m",
                     "warmup": s.warmup, "repeats": s.repeats, "stage_warmup": s.stage_warmup, "stage_repeats": s.stage_repeats,
                     "threads": s.threads, "quick": s.quick, "images_per_call": 1, "steady": s.steady, "min_time_s": s.min_time_s, "rounds": s.rounds,
                     "probe_baseline_ms": round(1e3 * probe["probe_baseline_s"], 3) if probe.get("probe_baseline_s") else None,
                     "probe_baseline_this_run_ms": round(1e3 * probe["probe_baseline_measured_s"], 3)
                     if probe.get("probe_baseline_measured_s") else None},
        "models": [{"name": r.name, "resolution": r.resolution, "source": str(r.source) if r.source else None, "arch": r.arch,
                    "exports": {k: str(v) for k, v in r.exports.items()}} for r in refs],
        "optimum_venv": {k: optimum.get(k) for k in ("ready", "reason", "dir", "log")},
        "sdcpp_venv": {k: (sdcpp or {}).get(k) for k in ("ready", "reason", "dir", "log")},
        "rows": records,
    })


def _clean(obj):
    """JSON-safe: no NaN/inf (→ null), tuples as lists."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (np.floating, np.integer)):
        return _clean(obj.item())
    return obj


def one_line(row, res: dict) -> str:
    if not res.get("ok"):
        return f"{row.id}: failed: {res.get('error')}"
    runs = summarize(res["generation"]["runs_s"]) or {}
    steps = summarize(res["generation"].get("steps_s")) or {}
    st = res.get("steadiness") or {}
    steady = (f"; {st['rerun']} call(s) re-run, {st['kept_disturbed']} kept disturbed"
              if st.get("rerun") or st.get("kept_disturbed") else "")
    return (f"{row.id}: generation {runs.get('median_s', float('nan')):.2f} s, U-Net step "
            f"{1000 * steps.get('median_s', float('nan')):.0f} ms, peak RSS {res['generation']['peak_rss_mb']:.0f} MB "
            f"(pid {res['pid']}{steady})")


def load_report(path: Path) -> dict:
    try:
        rep = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ShanshuiError(f"{path} does not exist; pass a report written by `shanshui bench`") from None
    except (OSError, ValueError, UnicodeDecodeError):
        raise ShanshuiError(f"{path} is not a JSON report; pass a report written by `shanshui bench`") from None
    if not isinstance(rep, dict) or rep.get("schema") != SCHEMA or not isinstance(rep.get("rows"), list):
        raise ShanshuiError(f"{path} is not a shanshui bench report (schema {SCHEMA})")
    return rep


def _ratio(new, old) -> float | None:
    return new / old if isinstance(new, (int, float)) and isinstance(old, (int, float)) and old > 0 and new > 0 else None


def compare_reports(old: dict, new: dict) -> list[dict]:
    """Per row id present in either: new/old of generation median, U-Net step, peak RSS and load time."""
    olds = {r["id"]: r for r in old["rows"] if r.get("status") == "ok"}
    news = {r["id"]: r for r in new["rows"] if r.get("status") == "ok"}
    out = []
    for rid in list(news) + [i for i in olds if i not in news]:
        n, o = news.get(rid), olds.get(rid)
        if n is None or o is None:
            out.append({"id": rid, "note": "only in the new report" if o is None else "only in the old report"})
            continue
        e = {"id": rid,
             "generation": _ratio(n["generation"].get("median_s"), o["generation"].get("median_s")),
             "unet_step": _ratio(_unet_s(n), _unet_s(o)),
             "unet_step_p10": _ratio(_unet_p10(n), _unet_p10(o)),
             "peak_rss": _ratio(n["generation"].get("peak_rss_mb"), o["generation"].get("peak_rss_mb")),
             "load": _ratio(n.get("load_s"), o.get("load_s"))}
        e["spread"] = max(relative_spread(n), relative_spread(o))
        e["disturbed"] = [tag for tag, r in (("new", n), ("old", o)) if (r.get("steadiness") or {}).get("kept_disturbed")]
        e["agrees"] = all(abs(e[k] - 1) <= e["spread"] for k in ("generation", "unet_step") if e[k] is not None)
        out.append(e)
    return out


SPREAD_FLOOR = 0.02  # differences this small agree whatever the samples say (timer and scheduler jitter)


def relative_spread(rec: dict) -> float:
    """A row's own spread, relative to its median: (p90 - p10) / median of its direct U-Net calls (same inputs every
    call, so their spread is the machine's and the runtime's noise; a generation is a sum of such steps, so its
    relative spread is no larger). Reports without stage percentiles fall back to the steps inside generations."""
    st = (rec.get("stages") or {}).get("unet_step") or {}
    if st.get("p10_s") is None or (st.get("n") or 0) < 2:
        st = rec.get("unet_step_in_pipeline") or {}
    med, lo, hi = st.get("median_s"), st.get("p10_s", st.get("median_s")), st.get("p90_s")
    if not med or lo is None or hi is None:
        return SPREAD_FLOOR
    return max(SPREAD_FLOOR, (hi - lo) / med)


def format_compare(entries: list[dict], old: dict, new: dict) -> str:
    keys = ("steps", "guidance", "threads", "prompt", "seed")
    diff = [f"{k} {old['settings'].get(k)!r} → {new['settings'].get(k)!r}" for k in keys
            if old.get("settings", {}).get(k) != new.get("settings", {}).get(k)]
    lines = ["new/old per row (below 1: faster or smaller)"]
    if diff:
        lines.append("note: settings differ: " + "; ".join(diff))
    width = max([len(e["id"]) for e in entries] + [3])
    lines.append(f"{'row':{width}s}  {'generation':>10s}  {'U-Net step':>10s}  {'U-Net p10':>9s}  {'peak RSS':>8s}  "
                 f"{'load':>6s}  {'spread':>6s}  within spread")
    for e in entries:
        if "note" in e:
            lines.append(f"{e['id']:{width}s}  {e['note']}")
            continue
        f = [f"{e[k]:.2f}×" if e.get(k) is not None else "—" for k in ("generation", "unet_step", "unet_step_p10", "peak_rss", "load")]
        lines.append(f"{e['id']:{width}s}  {f[0]:>10s}  {f[1]:>10s}  {f[2]:>9s}  {f[3]:>8s}  {f[4]:>6s}  "
                     f"{'±' + format(100 * e['spread'], '.0f') + '%':>6s}  {'yes' if e['agrees'] else 'NO'}"
                     + (f" (measured while disturbed: {' and '.join(e['disturbed'])} run)" if e.get("disturbed") else ""))
    both = [e for e in entries if "note" not in e]
    if both:
        agree = sum(e["agrees"] for e in both)
        lines.append(f"{agree} of {len(both)} rows agree within their own spread (generation and U-Net medians; spread: "
                     f"the larger of the two runs' (p90 - p10) / median of direct U-Net calls, at least "
                     f"{100 * SPREAD_FLOOR:.0f}%). U-Net p10: the fastest tenth of the calls, which noise moves least.")
    return "\n".join(lines)


def write_reports(report: dict, stem: Path) -> list[Path]:
    """STEM.json, STEM.md and STEM.png, each written atomically."""

    stem = Path(stem)
    report = portable_paths(report)  # no directory of this machine in a report people share
    paths = [stem.with_name(stem.name + ext) for ext in (".json", ".md", ".png")]
    try:
        write_json_atomic(paths[0], report)
        write_bytes_atomic(paths[1], to_markdown(report, chart=paths[2].name).encode("utf-8"))
        with atomic_path(paths[2]) as tmp:
            draw_chart(report).save(tmp, format="PNG")
    except OSError as e:
        raise ShanshuiError(f"cannot write the report at {stem}: {e.strerror or e}; choose a writable --out") from None
    return paths

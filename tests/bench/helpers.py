"""A synthetic bench report (no measuring), for the report, compare, Markdown and chart tests."""

from __future__ import annotations

import copy


def row(rid: str, runner: str, backend: str, precision: str, gen_s: float, unet_s: float, rss: float = 500.0,
        status: str = "ok", pid: int = 100) -> dict:
    model_size, rest = rid.split("/")
    model, size = model_size.split("@")
    r = {"id": rid, "model": model, "size": int(size), "height": int(size), "width": int(size), "runner": runner,
         "backend": backend, "device": "cpu", "precision": precision, "status": status, "reason": None, "pid": pid,
         "load_s": 1.0, "quality": None, "speedup_vs_diffusers": None, "generation": None, "stages": None,
         "disk_bytes": {"text_encoder": 1, "unet": 2, "vae_decoder": 3, "total": 6_000_000}}
    if status != "ok":
        r["reason"] = "no CUDA GPU is visible here"
        r["pid"] = None
        return r
    r["generation"] = {"first_s": gen_s * 2, "median_s": gen_s, "p90_s": gen_s * 1.1, "n": 3, "unet_calls": 4,
                       "peak_rss_mb": rss, "gpu_peak_mb": None, "split_median_s": {}}
    r["unet_step_in_pipeline"] = {"median_s": unet_s, "p90_s": unet_s, "n": 12}
    r["stages"] = {s: {"first_s": 0.5, "median_s": v, "p90_s": v, "n": 5, "peak_rss_mb": rss, "gpu_peak_mb": None,
                       "inputs": {}} for s, v in (("text_encoder", 0.01), ("unet_step", unet_s), ("vae_decode", 0.2))}
    r["memory_note"] = "peak RSS per stage (VmHWM reset through /proc/self/clear_refs)"
    return r


def fake_report(scale: float = 1.0) -> dict:
    rows = [
        row("tiny@256/onnxruntime-cpu-fp32", "shanshui", "onnxruntime", "fp32", 1.0 * scale, 0.10 * scale, pid=101),
        row("tiny@256/onnxruntime-cpu-int8", "shanshui", "onnxruntime", "int8", 0.8 * scale, 0.08 * scale, 400, pid=102),
        row("tiny@256/diffusers-cpu-fp32", "diffusers", "torch", "fp32", 4.0 * scale, 0.20 * scale, 800, pid=103),
        row("tiny@256/tensorrt-cuda-*", "shanshui", "tensorrt", "*", 0, 0, status="skipped"),
    ]
    return copy.deepcopy({
        "schema": "shanshui-bench/1",
        "environment": {"date": "2026-11-24T00:00:00Z", "cpu": "Test CPU", "cpu_flags": {"avx2": True, "avx512f": False},
                        "cores": 2, "memory_gb": 24.0, "gpu": None, "threads": 2, "os": "Linux", "python": "3.11",
                        "versions": {"numpy": "2"}, "onnxruntime_providers": ["CPUExecutionProvider"], "tensorrt": False,
                        "git": {"revision": "abc", "dirty": False}},
        "settings": {"prompt": "一棵青松", "seed": 0, "steps": 4, "guidance": 7.5, "sampler": "dpmpp_2m", "warmup": 1,
                     "repeats": 1, "stage_warmup": 1, "stage_repeats": 1, "threads": 2, "quick": True, "images_per_call": 1},
        "models": [], "optimum_venv": {"ready": False, "reason": "not requested"}, "rows": rows,
    })

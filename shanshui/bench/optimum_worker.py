"""The Optimum peer of `shanshui bench`: ORTStableDiffusionPipeline on a shanshui fp32 export, in Optimum's own venv.

Standalone on purpose: run by that venv's python (`python optimum_worker.py < spec.json`), it imports Optimum,
diffusers, torch and onnxruntime from there and never imports shanshui, only loads bench/steady.py by path. It
measures what worker.py measures for a shanshui row (load, cold and steady generations with per-step times from the
step callback, each stage called the way the pipeline calls it, peak RSS per phase, calls re-run where the machine
was disturbed) and writes the same JSON shape to spec["result"].
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback
from importlib import metadata

import numpy as np

HEAVY = ("onnxruntime", "torch", "diffusers", "transformers", "optimum", "shanshui")


class PeakRss:
    """Resettable peak RSS on Linux (clear_refs + VmHWM); getrusage's lifetime peak elsewhere."""

    def __init__(self):
        self.method = "clear_refs" if self._reset() else "getrusage"
        self.note = ("peak RSS per stage (VmHWM reset through /proc/self/clear_refs)" if self.method == "clear_refs"
                     else "peak RSS since the process started (getrusage; cannot be reset between stages here)")

    @staticmethod
    def _field(name: str) -> float | None:
        try:
            with open("/proc/self/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith(name + ":"):
                        return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def _reset(self) -> bool:
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")
            return self._field("VmHWM") is not None
        except OSError:
            return False

    def reset(self) -> None:
        if self.method == "clear_refs":
            self._reset()

    def peak_mb(self) -> float:
        hwm = self._field("VmHWM") if self.method == "clear_refs" else None
        if hwm is not None:
            return hwm
        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r / 2**20 if sys.platform == "darwin" else r / 1024


def load_steady(path: str):
    """shanshui's bench/steady.py (NumPy and stdlib only), loaded by path: this venv has no shanshui."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("shanshui_bench_steady", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def versions() -> dict:
    out = {}
    for dist in ("optimum", "optimum-onnx", "onnxruntime", "onnxruntime-gpu", "diffusers", "transformers", "torch",
                 "huggingface-hub"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def run(spec: dict, mem: PeakRss, guard) -> dict:
    mem.reset()
    t0 = time.perf_counter()
    pipe = _load(spec)
    load = {"load_s": time.perf_counter() - t0, "rss_after_load_mb": PeakRss._field("VmRSS"), "peak_rss_load_mb": mem.peak_mb()}
    gen, image = _generations(pipe, spec, mem, guard)
    stages = _stages(pipe, spec, mem, guard)
    np.save(spec["image"], image)
    return {**load, "generation": gen, "stages": stages, "gpu_memory_method": None, "image": spec["image"],
            "image_shape": list(image.shape), "versions": versions()}


def _load(spec: dict):
    """Optimum's ORTStableDiffusionPipeline over the export, DPM-Solver++ (2M) as the other rows."""
    import onnxruntime as ort
    import torch
    from diffusers import DPMSolverMultistepScheduler
    from diffusers.utils import logging as dlog
    from optimum.onnxruntime import ORTStableDiffusionPipeline

    dlog.set_verbosity_error()
    threads = spec.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads, opts.inter_op_num_threads = int(threads), 1
    provider = "CUDAExecutionProvider" if spec["device"] == "cuda" else "CPUExecutionProvider"
    pipe = ORTStableDiffusionPipeline.from_pretrained(spec["model_dir"], export=False, provider=provider, session_options=opts)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)  # DPM-Solver++ 2M, as the other rows
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generations(pipe, spec: dict, mem: PeakRss, guard) -> tuple[dict, np.ndarray]:
    """Whole generations, timed per stage through wrappers and the step callback; returns (summary, last image)."""
    import torch

    h, w, c, scale = spec["height"], spec["width"], spec["latent_channels"], spec["vae_scale"]
    noise = np.random.default_rng(spec["seed"]).standard_normal((1, c, h // scale, w // scale))
    latents = torch.from_numpy(noise).float()  # (1, C, h, w): the same initial noise as every other row
    rec: dict = {}

    def timed(fn, key):
        def wrapper(*a, **k):
            t = time.perf_counter()
            out = fn(*a, **k)
            rec.setdefault(key, []).append(time.perf_counter() - t)
            rec[key + "_end"] = time.perf_counter()
            return out
        return wrapper

    pipe.text_encoder.forward = timed(pipe.text_encoder.forward, "te")
    pipe.vae.decode = timed(pipe.vae.decode, "vae")

    def on_step(p, i, t, kwargs):
        rec["marks"].append(time.perf_counter())
        return kwargs

    def run_once() -> dict:
        rec.clear()
        rec["marks"] = []
        t0 = time.perf_counter()
        out = pipe(spec["prompt"], negative_prompt="", num_inference_steps=spec["steps"], guidance_scale=spec["guidance"],
                   height=h, width=w, latents=latents, output_type="np", callback_on_step_end=on_step)
        total = time.perf_counter() - t0
        start = rec.get("te_end", t0)
        return {"image": np.round(np.clip(out.images[0], 0, 1) * 255).astype(np.uint8),  # (H, W, 3)
                "total": total, "steps": [float(d) for d in np.diff([start] + rec["marks"])],
                "te_s": sum(rec.get("te", [])), "vae_s": sum(rec.get("vae", [])),
                "denoise_s": (rec["marks"][-1] - start) if rec["marks"] else 0.0, "calls": len(rec["marks"])}

    mem.reset()
    warm = [run_once() for _ in range(spec["warmup"])]  # the first is the cold run
    gen, image = _summarise(warm + guard.repeat(run_once, spec["repeats"], spec.get("min_time_s", 0.0)), spec["warmup"])
    gen["peak_rss_mb"], gen["gpu_peak_mb"] = mem.peak_mb(), None
    del pipe.text_encoder.forward, pipe.vae.decode
    return gen, image


def _summarise(generations: list[dict], warmup: int) -> tuple[dict, np.ndarray]:
    runs, steps, split, first = [], [], {"text_encoder_s": [], "denoise_s": [], "vae_decoder_s": []}, None
    for k, g in enumerate(generations):
        image, total, step_times, te_s, vae_s = g["image"], g["total"], g["steps"], g["te_s"], g["vae_s"]
        if k == 0:
            first = {"total_s": total, "text_encoder_s": te_s, "unet_first_step_s": step_times[0] if step_times else None,
                     "vae_decoder_s": vae_s}
        if k >= warmup:
            runs.append(total)
            steps.extend(step_times)
            split["text_encoder_s"].append(te_s)
            split["vae_decoder_s"].append(vae_s)
            split["denoise_s"].append(g["denoise_s"])
    return {"first": first, "runs_s": runs, "steps_s": steps, "split_s": split, "unet_calls": g["calls"]}, image


def _stages(pipe, spec: dict, mem: PeakRss, guard) -> dict:
    """Each stage called as the pipeline calls it (torch tensors in, a 0-d timestep), on fixed inputs."""
    import torch

    rng = np.random.default_rng(0)
    ins = spec["stage_inputs"]
    ids = torch.from_numpy(rng.integers(0, spec["vocab_size"], size=ins["text_encoder"]["input_ids"], dtype=np.int64))
    sample = torch.from_numpy(rng.standard_normal(ins["unet_step"]["sample"]).astype(np.float32))
    cond = torch.from_numpy(rng.standard_normal(ins["unet_step"]["encoder_hidden_states"]).astype(np.float32))
    z = torch.from_numpy(rng.standard_normal(ins["vae_decode"]["latent_sample"]).astype(np.float32))
    calls = {
        "text_encoder": lambda: pipe.text_encoder(input_ids=ids),
        "unet_step": lambda: pipe.unet(sample=sample, timestep=torch.tensor(500.0), encoder_hidden_states=cond),
        "vae_decode": lambda: pipe.vae.decode(z),
    }
    stages = {}
    for name, call in calls.items():
        mem.reset()
        for _ in range(spec["stage_warmup"]):
            call()

        def timed(call=call) -> float:
            t = time.perf_counter()
            call()
            return time.perf_counter() - t

        times = guard.repeat(timed, spec["stage_repeats"], spec.get("min_time_s", 0.0))
        stages[name] = {"runs_s": times, "peak_rss_mb": mem.peak_mb(), "gpu_peak_mb": None, "inputs": ins[name],
                        "warmup": spec["stage_warmup"]}
    return stages


def main() -> int:
    spec = json.loads(sys.stdin.read())
    if spec.get("threads"):
        os.environ.setdefault("OMP_NUM_THREADS", str(spec["threads"]))
    result: dict = {"pid": os.getpid(), "task": "row"}
    try:
        mem = PeakRss()
        result.update(memory_method=mem.method, memory_note=mem.note)
        guard = load_steady(spec["steady_module"]).Guard(spec.get("threads") or os.cpu_count() or 1, spec.get("probe_baseline_s"),
                                                         settle_s=spec.get("settle_s", 30.0), enabled=spec.get("steady", False))
        result.update(run(spec, mem, guard))
        result["steadiness"] = guard.report()
        result["ok"] = True
    except BaseException as e:  # noqa: BLE001  (every failure becomes the row's one-line reason)
        result.update(ok=False, error=" ".join(f"{type(e).__name__}: {e}".split())[:500])
        traceback.print_exc()
    result["modules_loaded"] = sorted(m for m in HEAVY if m in sys.modules)
    with open(spec["result"], "w", encoding="utf-8") as f:
        json.dump(result, f)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""The measuring side of `shanshui bench`: one fresh process per row, a JSON spec on stdin, JSON written to spec["result"].

    python -m shanshui.bench.worker < spec.json

Tasks: `probe` (what this machine offers), `init` (a random-weight model), `export` (an ONNX export), and `row`
(one measured row). A row: load the model (timed, peak RSS) → warm-up + repeated end-to-end generations (the first
one is the cold run; per-step U-Net time from the step callback; peak RSS of the whole generation) → each stage
called directly with fixed contract inputs (warm-up, repeats, its own peak RSS). The worker returns raw samples;
the parent computes medians and percentiles. Failures become {"ok": false, "error": one line}.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from shanshui.bench.lowmem import configure_diffusers
from shanshui.bench.memory import GpuPeak, PeakRss, rss_mb
from shanshui.bench.steady import Guard, measure_baseline
from shanshui.engines.build import build_engines
from shanshui.errors import ShanshuiError
from shanshui.quantize.convert import export_at
from shanshui.hf import quiet_hf
from shanshui.runtime.backends import TorchComponents
from shanshui.runtime.pipeline import Request, open_pipeline
from shanshui.spec.contract import components as specs_for
from shanshui.spec.source import open_source
from shanshui.train.arch import init_model
from shanshui.runtime.lowmem import BY_NAME, Strategy

HEAVY = ("onnxruntime", "torch", "diffusers", "transformers", "tensorrt")


def _sync(device: str) -> None:
    if device == "cuda" and "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()


def _stage_calls(components, dims, h: int, w: int, b2: int) -> dict:
    """Fixed inputs from the component contract and the call that runs each stage on them."""

    specs = specs_for(dims)
    values = {"B2": b2, "B": 1, "H": h, "W": w, "h": h // dims.vae_scale, "w": w // dims.vae_scale}
    te = specs["text_encoder"].sample_inputs(dims, values)  # input_ids (B2, L)
    un = specs["unet"].sample_inputs(dims, values)  # sample (B2, C, h, w), timestep (B2,), encoder_hidden_states (B2, L, D)
    vae = specs["vae_decoder"].sample_inputs(dims, values)  # latent_sample (1, C, h, w)
    return {
        "text_encoder": (lambda: components.text_encoder(te["input_ids"]), {k: list(v.shape) for k, v in te.items()}),
        "unet_step": (lambda: components.unet(un["sample"], un["timestep"], un["encoder_hidden_states"]),
                      {k: list(v.shape) for k, v in un.items()}),
        "vae_decode": (lambda: components.vae_decoder(vae["latent_sample"]), {k: list(v.shape) for k, v in vae.items()}),
    }


GPU_TIMING_KEYS = {"text_encoder": "text_encoder", "unet_step": "unet", "vae_decode": "vae_decoder"}


def _measure_stages(calls: dict, spec: dict, mem: PeakRss, gpu: GpuPeak | None, guard: Guard, components=None) -> dict:
    """Warm-up, then timed direct calls of each stage (re-run where the machine was disturbed, see steady.py), with
    its own peak RSS (and GPU time where the backend records CUDA-event milliseconds in `components.timings`, as the
    TensorRT and CUDA torch runners do)."""
    out = {}
    gpu_ms = getattr(components, "timings", None)
    sequential = getattr(getattr(components, "strategy", None), "sequential", False)
    for name, (call, shapes) in calls.items():
        if sequential:  # low-memory: the stage before is freed, as in a generation, before this one's peak is taken
            components.free()
        mem.reset()
        if gpu:
            gpu.reset()
        for _ in range(spec["stage_warmup"]):
            call()
        key = GPU_TIMING_KEYS[name]
        gpu_list = gpu_ms.get(key) if isinstance(gpu_ms, dict) and isinstance(gpu_ms.get(key), list) else None

        def timed() -> tuple[float, float | None]:
            n = len(gpu_list) if gpu_list is not None else 0
            _sync(spec["device"])
            t = time.perf_counter()
            call()
            _sync(spec["device"])
            return time.perf_counter() - t, (gpu_list[-1] if gpu_list is not None and len(gpu_list) > n else None)

        kept = guard.repeat(timed, spec["stage_repeats"], spec.get("min_time_s", 0.0))  # (seconds, GPU ms or None)
        runs = [k[0] for k in kept]
        out[name] = {"runs_s": runs, "peak_rss_mb": mem.peak_mb(), "gpu_peak_mb": gpu.peak_mb() if gpu else None,
                     "inputs": shapes, "warmup": spec["stage_warmup"]}
        if any(k[1] is not None for k in kept):
            out[name]["gpu_runs_ms"] = [float(k[1]) for k in kept if k[1] is not None]
    return out


def _save_image(path: str, image: np.ndarray) -> dict:
    np.save(path, np.ascontiguousarray(image, dtype=np.uint8))  # (H, W, 3) uint8
    return {"image": path, "image_shape": list(image.shape)}


def _first_and_steps(denoise_start: float, marks: list[float], timings: dict) -> tuple[dict, list[float]]:
    """The cold numbers of one generation, and its per-step times (one U-Net call per step, plus the sampler's arithmetic)."""
    steps = [float(d) for d in np.diff([denoise_start] + marks)] if marks else []
    return {"total_s": timings["total_s"], "text_encoder_s": timings["text_encoder_s"],
            "unet_first_step_s": steps[0] if steps else None, "vae_decoder_s": timings["vae_decoder_s"]}, steps


def _generations(run_once, spec: dict, mem: PeakRss, gpu: GpuPeak | None, guard: Guard) -> tuple[dict, np.ndarray]:
    """Warm-ups, then measured generations (re-run where the machine was disturbed). run_once() -> (image, timings with total_s/text_encoder_s/vae_decoder_s/denoise_start/marks/unet_calls)."""
    mem.reset()
    if gpu:
        gpu.reset()
    runs, steps, split, first = [], [], {"text_encoder_s": [], "denoise_s": [], "vae_decoder_s": []}, None
    warm = [run_once() for _ in range(spec["warmup"])]  # the first is the cold run
    measured = guard.repeat(run_once, spec["repeats"], spec.get("min_time_s", 0.0))
    for k, (image, t) in enumerate(warm + measured):
        f, s = _first_and_steps(t["denoise_start"], t["marks"], t)
        calls = t["unet_calls"]
        if k == 0:
            first = f
        if k >= spec["warmup"]:
            runs.append(t["total_s"])
            steps.extend(s)
            for key in split:
                split[key].append(t[key])
    gen = {"first": first, "runs_s": runs, "steps_s": steps, "split_s": split, "unet_calls": calls,
           "peak_rss_mb": mem.peak_mb(), "gpu_peak_mb": gpu.peak_mb() if gpu else None}
    return gen, image


def run_shanshui(spec: dict, mem: PeakRss, guard: Guard) -> dict:
    """A row through shanshui's own Pipeline (onnxruntime, torch or tensorrt backend)."""

    dev, backend = spec["device"], spec["backend"]
    gpu = GpuPeak("torch" if backend == "torch" else "nvml") if dev == "cuda" else None
    mem.reset()
    kw = {"precision": spec["precision"]} if backend == "torch" and spec["precision"] != "fp32" else {}
    if spec.get("memory"):
        settings = spec.get("memory_settings")
        kw["memory"] = Strategy(**settings) if settings else BY_NAME[spec["memory"]]
    pipe = open_pipeline(spec["model_dir"], backend=backend, device=dev, threads=spec["threads"], **kw)
    load_s = pipe.load_seconds
    load = {"load_s": load_s, "rss_after_load_mb": rss_mb(), "peak_rss_load_mb": mem.peak_mb()}
    req = Request(prompt=spec["prompt"], steps=spec["steps"], guidance=spec["guidance"], seed=spec["seed"],
                  height=spec["height"], width=spec["width"], sampler="dpmpp_2m")

    def run_once():
        marks = []
        t0 = time.perf_counter()
        res = pipe(req, callback=lambda i, n: marks.append(time.perf_counter()))
        t = dict(res.timings, t0=t0, denoise_start=t0 + res.timings["text_encoder_s"], marks=marks)
        return res.images[0], t

    gen, image = _generations(run_once, spec, mem, gpu, guard)
    b2 = 2 if spec["guidance"] != 1 else 1
    stages = _measure_stages(_stage_calls(pipe.components, pipe.dims, spec["height"], spec["width"], b2), spec, mem, gpu,
                             guard, pipe.components)
    return {**load, "generation": gen, "stages": stages, "gpu_memory_method": gpu.method if gpu else None,
            **_save_image(spec["image"], image)}


def _load_diffusers(spec: dict):
    """diffusers' pipeline for the row, on its device, with DPM-Solver++ (2M); returns it and its torch dtype."""
    import diffusers
    import torch

    quiet_hf()
    if spec["threads"]:
        torch.set_num_threads(int(spec["threads"]))
    dtype = torch.float16 if spec["precision"] == "fp16" else torch.float32
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(spec["model_dir"], safety_checker=None, requires_safety_checker=False,
                                                             torch_dtype=dtype, use_safetensors=True)
    pipe.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)  # DPM-Solver++ 2M
    pipe = pipe.to(spec["device"])
    pipe.set_progress_bar_config(disable=True)
    if spec.get("memory"):  # the peer's low-memory row
        configure_diffusers(pipe, max(spec["height"], spec["width"]))
    return pipe, dtype


def run_diffusers(spec: dict, mem: PeakRss, guard: Guard) -> dict:
    """The peer: diffusers' StableDiffusionPipeline in PyTorch eager, DPM-Solver++ (2M), the same initial noise."""
    mem.reset()
    t0 = time.perf_counter()
    pipe, dtype = _load_diffusers(spec)
    import torch

    dev = spec["device"]
    load = {"load_s": time.perf_counter() - t0, "rss_after_load_mb": rss_mb(), "peak_rss_load_mb": mem.peak_mb()}
    gpu = GpuPeak("torch") if dev == "cuda" else None
    dims = open_source(Path(spec["model_dir"])).dims
    h, w = spec["height"], spec["width"]
    noise = np.random.default_rng(spec["seed"]).standard_normal((1, dims.latent_channels, h // dims.vae_scale, w // dims.vae_scale))
    latents = torch.from_numpy(noise).to(dtype)  # (1, C, h, w): the DDPM-space noise shanshui's sampler starts from
    rec: dict = {}

    def timed(fn, key):
        def wrapper(*a, **k):
            _sync(dev)
            t = time.perf_counter()
            out = fn(*a, **k)
            _sync(dev)
            rec.setdefault(key, []).append(time.perf_counter() - t)
            rec[key + "_end"] = time.perf_counter()
            return out
        return wrapper

    pipe.text_encoder.forward = timed(pipe.text_encoder.forward, "te")
    pipe.vae.decode = timed(pipe.vae.decode, "vae")

    def on_step(p, i, t, kwargs):
        _sync(dev)
        rec["marks"].append(time.perf_counter())
        return kwargs

    def run_once():
        rec.clear()
        rec["marks"] = []
        t0 = time.perf_counter()
        out = pipe(spec["prompt"], negative_prompt="", num_inference_steps=spec["steps"], guidance_scale=spec["guidance"],
                   height=h, width=w, latents=latents.to(dev), output_type="np", callback_on_step_end=on_step)
        total = time.perf_counter() - t0
        image = np.round(np.clip(out.images[0], 0, 1) * 255).astype(np.uint8)  # (H, W, 3)
        t = {"total_s": total, "text_encoder_s": sum(rec.get("te", [])), "vae_decoder_s": sum(rec.get("vae", [])),
             "t0": t0, "denoise_start": rec.get("te_end", t0), "marks": rec["marks"], "unet_calls": len(rec["marks"])}
        t["denoise_s"] = (rec["marks"][-1] - t["denoise_start"]) if rec["marks"] else 0.0
        return image, t

    gen, image = _generations(run_once, spec, mem, gpu, guard)
    del pipe.text_encoder.forward, pipe.vae.decode  # the class methods again, for direct stage calls
    parts = TorchComponents(pipe.text_encoder, pipe.unet, pipe.vae, dev)
    b2 = 2 if spec["guidance"] != 1 else 1
    stages = _measure_stages(_stage_calls(parts, dims, h, w, b2), spec, mem, gpu, guard)
    return {**load, "generation": gen, "stages": stages, "gpu_memory_method": gpu.method if gpu else None,
            **_save_image(spec["image"], image)}


def probe(spec: dict) -> dict:
    """What this machine offers: ONNX Runtime providers, torch and CUDA, TensorRT, shanshui's TensorRT backend."""
    import importlib.util

    info: dict = {"providers": [], "torch": False, "torch_cuda": False, "gpu_name": None}
    try:
        import onnxruntime as ort

        info["providers"] = list(ort.get_available_providers())
    except ImportError:
        pass
    if spec.get("torch", True):
        try:
            import torch

            info["torch"] = True
            info["torch_cuda"] = bool(torch.cuda.is_available())
            if info["torch_cuda"]:
                info["gpu_name"] = torch.cuda.get_device_name(0)
        except ImportError:
            pass
    info["tensorrt"] = importlib.util.find_spec("tensorrt") is not None
    info["trt_backend"] = importlib.util.find_spec("shanshui.runtime.trt_backend") is not None
    info["bitsandbytes"] = importlib.util.find_spec("bitsandbytes") is not None
    if spec.get("steady", False):
        info["probe_baseline_s"] = measure_baseline(spec.get("threads") or os.cpu_count() or 1)
    return info


def row_guard(spec: dict) -> Guard:
    """The steadiness guard of a row: the probe runs on as many threads as the row does."""
    return Guard(spec.get("threads") or os.cpu_count() or 1, spec.get("probe_baseline_s"), settle_s=spec.get("settle_s", 30.0),
                 enabled=spec.get("steady", False))


def init_model_task(spec: dict) -> dict:
    return {"summary": init_model(spec["arch"], Path(spec["out"]), seed=spec.get("seed", 0))}


def export_task(spec: dict) -> dict:
    m = export_at(Path(spec["model_dir"]), Path(spec["out"]), precision=spec["precision"], height=spec["height"],
                     width=spec["width"], max_batch=spec.get("max_batch", 1), check=spec.get("check", False))
    return {"precision": m["precision"], "files_bytes": m.get("files_bytes", {}),
            "quantization": {k: v.get("precision") for k, v in m.get("quantization", {}).items()}}


def engines_task(spec: dict) -> dict:
    """TensorRT engines for an export (EXPORT/engines), static buckets of one image per benchmarked size."""

    m = build_engines(Path(spec["export_dir"]), None, precision=spec["precision"], shapes=spec["shapes"])
    return {"engines": m["out_dir"], "bytes": {c: e.get("bytes") for c, e in m.get("components", {}).items()}}


TASKS = {"probe": probe, "init": init_model_task, "export": export_task, "engines": engines_task}


def main() -> int:
    spec = json.loads(sys.stdin.read())
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if spec.get("threads"):
            os.environ.setdefault(var, str(spec["threads"]))
    result: dict = {"pid": os.getpid(), "task": spec["task"]}
    try:
        if spec["task"] == "row":
            mem = PeakRss()
            result.update(memory_method=mem.method, memory_note=mem.note)
            runner = run_diffusers if spec["runner"] == "diffusers" else run_shanshui
            guard = row_guard(spec)
            result.update(runner(spec, mem, guard))
            result["steadiness"] = guard.report()
        else:
            result.update(TASKS[spec["task"]](spec))
        result["ok"] = True
    except BaseException as e:  # noqa: BLE001  (every failure becomes the row's one-line reason)

        msg = str(e) if isinstance(e, ShanshuiError) else f"{type(e).__name__}: {e}"
        result.update(ok=False, error=" ".join(msg.split())[:500] or type(e).__name__)
        traceback.print_exc()
    result["modules_loaded"] = sorted(m for m in HEAVY if m in sys.modules)
    with open(spec["result"], "w", encoding="utf-8") as f:
        json.dump(result, f)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

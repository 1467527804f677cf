"""The stable-diffusion.cpp peer of `shanshui bench`: the C++ engine through its binding stable-diffusion-cpp-python,
in its own venv, on the row's diffusers folder (sd.cpp reads unet/, vae/ and text_encoder/ safetensors itself and
converts the weights to the row's type, q8_0 or f16, while loading).

Standalone on purpose: run by that venv's python (`python sdcpp_worker.py < spec.json`), it never imports shanshui,
only loads bench/memory.py and bench/steady.py by path. It writes the JSON shape worker.py writes:
- load: import + StableDiffusion(...) (weights read and converted), peak RSS of that phase;
- generations: whole txt2img calls (DPM++ 2M, sd.cpp's discrete schedule, same prompt, empty negative prompt,
  seed, steps, size, guidance and threads as the other rows), per-step times from the binding's progress callback;
- stages: the binding has no way to call one stage on its own, so each stage is measured *inside* the generations,
  from sd.cpp's own log lines ("get_learned_condition / sampling / decode_first_stage completed, taking X s", 10 ms
  resolution), and the resident high-water mark is read and reset at those same log lines, so each stage has its
  own peak RSS. Records say so (`"source": "in_pipeline"`).
sd.cpp draws its initial noise with its own generator and tokenizes with its own CLIP BPE vocabulary, so its image is
not comparable pixel for pixel with the other rows'; the report compares its q8_0 image with its f16 image instead.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import re
import sys
import time
import traceback
from importlib import metadata

HEAVY = ("stable_diffusion_cpp", "numpy", "shanshui")
STAGE_LINES = {  # sd.cpp log line -> stage
    "get_learned_condition completed": "text_encoder",
    "sampling completed": "unet",
    "decode_first_stage completed": "vae_decode",
}
TAKING = re.compile(r"(get_learned_condition|sampling|decode_first_stage) completed, taking ([0-9.]+)\s*(ms|s)\b")


def load_module(path: str, name: str):
    """A shanshui module that needs only NumPy and the standard library, loaded by path (this venv has no shanshui)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_stage_line(text: str) -> tuple[str, float] | None:
    """('text_encoder' | 'unet' | 'vae_decode', seconds) from one sd.cpp log line, else None."""
    m = TAKING.search(text)
    if not m:
        return None
    value = float(m.group(2)) / (1000.0 if m.group(3) == "ms" else 1.0)
    return STAGE_LINES[m.group(1) + " completed"], value


def step_times(marks: list[tuple[int, float]], steps: int) -> list[float]:
    """Seconds per sampling step from the progress callback's (step, time) marks: step 0 comes when sampling starts,
    step k when step k is done. Marks of other progress (e.g. VAE tiles, a different total) are not passed in."""
    times = [t for k, t in sorted(marks, key=lambda m: m[0])]
    if len(times) < 2 or marks[0][0] != 0:
        return []
    return [b - a for a, b in zip(times, times[1:])][:steps]


class StageLog:
    """Receives sd.cpp's log lines: keeps the stage timings, reads (then resets) the resident peak at each stage end,
    and passes every line on to stderr (the row's log)."""

    ERROR = 3  # sd_log_level_t SD_LOG_ERROR

    def __init__(self, mem):
        self.mem, self.times, self.peaks, self.last_error = mem, {}, {}, None

    def clear(self) -> None:
        self.times, self.peaks = {}, {}

    def __call__(self, level: int, text: bytes, data) -> None:
        line = text.decode("utf-8", errors="replace") if text else ""
        sys.stderr.write(line)
        if level == self.ERROR and line.strip():
            self.last_error = line.split(" - ", 1)[-1].strip()  # without sd.cpp's "file.cpp:LINE - " prefix
        hit = parse_stage_line(line)
        if hit is not None:
            stage, seconds = hit
            self.times[stage] = self.times.get(stage, 0.0) + seconds
            self.peaks[stage] = max(self.peaks.get(stage, 0.0), self.mem.peak_mb())
            self.mem.reset()


def versions() -> dict:
    out = {}
    for dist in ("stable-diffusion-cpp-python", "numpy", "pillow"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def run(spec: dict, mem, guard, rss_mb) -> dict:
    import numpy as np

    mem.reset()
    t0 = time.perf_counter()
    sd, stage_log, keep = _load(spec, mem)
    load = {"load_s": time.perf_counter() - t0, "rss_after_load_mb": rss_mb(), "peak_rss_load_mb": mem.peak_mb()}
    gen, stages, image = _generations(sd, stage_log, spec, mem, guard)
    np.save(spec["image"], image)
    del keep
    return {**load, "generation": gen, "stages": stages, "gpu_memory_method": None, "image": spec["image"],
            "image_shape": list(image.shape), "versions": versions(), "weight_type": spec["weight_type"]}


def _load(spec: dict, mem):
    """StableDiffusion over the diffusers folder, weights converted to the row's type; our log callback installed."""
    import stable_diffusion_cpp
    from stable_diffusion_cpp import StableDiffusion

    stage_log = StageLog(mem)
    callback = stable_diffusion_cpp.sd_log_callback(stage_log)  # ctypes keeps no reference: the caller must
    stable_diffusion_cpp.sd_set_log_callback(callback, ctypes.c_void_p(0))
    threads = int(spec.get("threads") or os.cpu_count() or 1)
    sd = StableDiffusion(model_path=spec["model_dir"], wtype=spec["weight_type"], n_threads=threads,
                         vae_decode_only=True, verbose=True)  # txt2img decodes only, as sd.cpp's CLI does
    check_loaded(sd, stage_log.last_error)
    return sd, stage_log, callback


def check_loaded(sd, last_error: str | None) -> None:
    """The binding (0.4.7) takes the NULL context sd.cpp returns when it cannot load a model (e.g. no SD version
    recognised from the tensors) for a loaded one; generating then fails with "NULL pointer access" and freeing it
    crashes the process. Say why instead, and drop the NULL context so nothing frees it."""
    inner = getattr(sd, "_model", None)
    if inner is not None and not getattr(inner, "model", True):
        inner.model = None
        raise RuntimeError("stable-diffusion.cpp could not load this model"
                           + (f" ({last_error})" if last_error else "") + "; it loads SD 1.x/2.x/XL-shaped diffusers folders")


def _generations(sd, stage_log: StageLog, spec: dict, mem, guard):
    """Whole generations; returns (generation summary, in-pipeline stages, last image (H, W, 3) uint8)."""
    import numpy as np

    marks: list[tuple[int, float]] = []

    def on_progress(step, steps, seconds):
        if steps == spec["steps"]:
            marks.append((int(step), time.perf_counter()))

    def run_once() -> dict:
        marks.clear()
        stage_log.clear()
        mem.reset()
        t0 = time.perf_counter()
        images = sd.generate_image(prompt=spec["prompt"], negative_prompt="", width=spec["width"], height=spec["height"],
                                   cfg_scale=spec["guidance"], sample_method="dpm++2m", scheduler="discrete",
                                   sample_steps=spec["steps"], seed=spec["seed"], progress_callback=on_progress)
        total = time.perf_counter() - t0
        image = np.asarray(images[0].convert("RGB"), dtype=np.uint8)  # (H, W, 3)
        return {"image": image, "total": total, "steps": step_times(list(marks), spec["steps"]),
                "times": dict(stage_log.times), "peaks": {**stage_log.peaks, "end": mem.peak_mb()}}

    warm = [run_once() for _ in range(spec["warmup"])]  # the first is the cold run
    measured = guard.repeat(run_once, spec["repeats"], spec.get("min_time_s", 0.0))
    return summarise(warm + measured, spec["warmup"])


def summarise(generations: list[dict], warmup: int) -> tuple[dict, dict, object]:
    """The generation summary worker.py writes, the in-pipeline stages, and the last image."""
    g0, runs = generations[0], generations[warmup:] or generations[-1:]
    first = {"total_s": g0["total"], "text_encoder_s": g0["times"].get("text_encoder"),
             "unet_first_step_s": g0["steps"][0] if g0["steps"] else None, "vae_decoder_s": g0["times"].get("vae_decode")}
    peaks = [max(g["peaks"].values()) for g in runs if g["peaks"]]
    gen = {"first": first, "runs_s": [g["total"] for g in runs], "steps_s": [s for g in runs for s in g["steps"]],
           "split_s": {"text_encoder_s": [g["times"]["text_encoder"] for g in runs if "text_encoder" in g["times"]],
                       "denoise_s": [g["times"]["unet"] for g in runs if "unet" in g["times"]],
                       "vae_decoder_s": [g["times"]["vae_decode"] for g in runs if "vae_decode" in g["times"]]},
           "unet_calls": len(runs[-1]["steps"]), "peak_rss_mb": max(peaks) if peaks else None, "gpu_peak_mb": None}

    def stage(name: str, runs_s: list[float]) -> dict:
        vals = [g["peaks"][name] for g in runs if name in g["peaks"]]
        return {"runs_s": runs_s, "peak_rss_mb": max(vals) if vals else None, "gpu_peak_mb": None, "inputs": None,
                "warmup": warmup, "source": "in_pipeline"}

    stages = {"text_encoder": stage("text_encoder", gen["split_s"]["text_encoder_s"]),
              "unet_step": stage("unet", list(gen["steps_s"])),
              "vae_decode": stage("vae_decode", gen["split_s"]["vae_decoder_s"])}
    return gen, stages, generations[-1]["image"]


def main() -> int:
    spec = json.loads(sys.stdin.read())
    result: dict = {"pid": os.getpid(), "task": "row"}
    try:
        memory = load_module(spec["memory_module"], "shanshui_bench_memory")
        mem = memory.PeakRss()
        result.update(memory_method=mem.method, memory_note=mem.note)
        steady = load_module(spec["steady_module"], "shanshui_bench_steady")
        guard = steady.Guard(spec.get("threads") or os.cpu_count() or 1, spec.get("probe_baseline_s"),
                             settle_s=spec.get("settle_s", 30.0), enabled=spec.get("steady", False))
        result.update(run(spec, mem, guard, memory.rss_mb))
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

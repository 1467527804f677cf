"""Runs a benchmark: probe the machine, plan rows, prepare models and exports, run each row in a fresh process.

The parent never imports torch or onnxruntime: probing, model making, exporting and every measured row happen in
worker processes, one per row, so each row starts from an empty process (its own load time, arenas, peak memory).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from shanshui.bench.plan import ModelRef, Row, Settings, plan_rows, resolve_models
from shanshui.errors import ShanshuiError
from shanshui.bench import prepare, report
from shanshui.bench.report import cpu_info
from shanshui.bench.steady import remembered_baseline
from shanshui.bench.venv import optimum_venv, sdcpp_venv
from shanshui.spec.contract import ModelDims, components
from shanshui.bench.lowmem import add_rows, diffusers_row, resolve_row

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the shanshui package
OPTIMUM_SCRIPT = Path(__file__).resolve().parent / "optimum_worker.py"
SDCPP_SCRIPT = Path(__file__).resolve().parent / "sdcpp_worker.py"
STEADY_MODULE = Path(__file__).resolve().parent / "steady.py"
MEMORY_MODULE = Path(__file__).resolve().parent / "memory.py"
PEER_SCRIPTS = {"optimum": OPTIMUM_SCRIPT, "sdcpp": SDCPP_SCRIPT}  # peers that run in their own venvs
HEAVY = ("onnxruntime", "torch", "diffusers", "transformers", "tensorrt", "optimum")


@dataclass
class BenchConfig:
    models: list[str] = field(default_factory=lambda: ["default"])
    sizes: list[int] | None = None
    backends: list[str] = field(default_factory=lambda: ["onnxruntime", "torch", "tensorrt"])
    precisions: list[str] = field(default_factory=lambda: ["fp32", "fp16", "int8"])
    device: str = "auto"
    peers: list[str] = field(default_factory=lambda: ["diffusers"])  # requested; "optimum", "sdcpp" build their venvs
    settings: Settings = field(default_factory=Settings)
    cache: Path | None = None
    venv_root: Path | None = None
    venv_timeout_s: float = 1800
    sdcpp_venv_timeout_s: float = 3600  # it compiles stable-diffusion.cpp
    memory: list[str] = field(default_factory=list)  # low-memory requests: rows added beside onnxruntime/cpu rows


def run_worker(spec: dict, workdir: Path, name: str, timeout_s: float | None = None, python: str | None = None,
               script: Path | None = None) -> dict:
    """Run one worker process on `spec` (JSON on stdin); its JSON result, or {"ok": False, "error": why}."""
    result_path = workdir / f"{name}.result.json"
    log_path = workdir / f"{name}.log"
    spec = {**spec, "result": str(result_path)}
    env = dict(os.environ)
    if script is None:
        cmd = [sys.executable, "-m", "shanshui.bench.worker"]
        env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    else:  # a standalone script in another venv: isolated mode, nothing of ours on its path
        cmd = [python or sys.executable, "-I", str(script)]
    if spec.get("threads"):
        env["OMP_NUM_THREADS"] = str(spec["threads"])
    with open(log_path, "w", encoding="utf-8") as log:
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=env, text=True)
        except OSError as e:
            return {"ok": False, "error": f"cannot start {cmd[0]}: {e.strerror or e}"}
        try:
            proc.communicate(json.dumps(spec), timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return {"ok": False, "pid": proc.pid, "error": f"timed out after {timeout_s:.0f} s (raise --timeout)"}
    try:
        result = json.loads(result_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        lines = [ln for ln in log_path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        killed = " (killed: out of memory?)" if proc.returncode in (-9, 137) else ""
        return {"ok": False, "pid": proc.pid, "error": f"worker exited with {proc.returncode}{killed}: {lines[-1] if lines else 'no output'}"}
    result.setdefault("pid", proc.pid)
    return result


class Display:
    """A rich progress bar over the rows, with one line per finished row; silent when quiet."""

    def __init__(self, total: int, quiet: bool = False):
        self.quiet, self.progress, self.task = quiet, None, None
        if not quiet:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), console=Console(stderr=True),
                                     refresh_per_second=1)  # few wake-ups of this process while a row measures
            self.task = self.progress.add_task("preparing", total=total)

    def __enter__(self):
        if self.progress:
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.progress:
            self.progress.stop()

    def status(self, text: str) -> None:
        if self.progress:
            self.progress.update(self.task, description=text)

    def log(self, text: str) -> None:
        if self.progress:
            self.progress.console.print(text, markup=False, highlight=False)

    def advance(self) -> None:
        if self.progress:
            self.progress.advance(self.task)


def _stage_inputs(export: Path, guidance: float, h: int, w: int) -> tuple[dict, dict]:
    """Input shapes of each stage (from the export's manifest and the contract) for the Optimum worker, and dims."""

    m = json.loads((export / "shanshui_manifest.json").read_text(encoding="utf-8"))
    dims = ModelDims(**m["dims"])
    specs = components(dims)
    values = {"B2": 2 if guidance != 1 else 1, "B": 1, "H": h, "W": w, "h": h // dims.vae_scale, "w": w // dims.vae_scale}
    shapes = {stage: {t.name: list(specs[comp].shape_of(t, values)) for t in specs[comp].inputs}
              for stage, comp in (("text_encoder", "text_encoder"), ("unet_step", "unet"), ("vae_decode", "vae_decoder"))}
    return shapes, asdict(dims)


def run_bench(config: BenchConfig, quiet: bool = False, warn: Callable[[str], None] = lambda s: None,
              note: Callable[[str], None] = lambda s: None) -> dict:
    """Measure every planned row; returns the report (see report.build_report). `warn`/`note`: messages to show."""
    s = config.settings
    cache = Path(config.cache or prepare.default_cache())
    refs = resolve_models(config.models)  # before anything slow: a wrong --model fails at once
    load_start = _loadavg()
    if load_start is not None and load_start > 0.5 * (os.cpu_count() or 1):
        warn(f"the machine is busy (1-minute load average {load_start:.1f} on {os.cpu_count()} cores): timings will be "
             f"noisy; the report records the load")
    workdir = Path(tempfile.mkdtemp(prefix="shanshui-bench-"))
    try:
        peers = [] if "none" in config.peers else ["diffusers", "optimum", "sdcpp"]  # listed even when not run
        probe = run_worker({"task": "probe", "torch": "torch" in config.backends or bool(peers), "threads": s.threads,
                            "steady": s.steady}, workdir, "probe")
        if s.steady and probe.get("ok"):
            key = f"{cpu_info()[0]}|{os.cpu_count()} cores|{s.threads} threads"
            probe["probe_baseline_measured_s"] = probe.get("probe_baseline_s")
            probe["probe_baseline_s"] = remembered_baseline(cache / "probe-baselines.json", key, probe.get("probe_baseline_s"))
        optimum = {"ready": False, "reason": "not requested"}
        if "optimum" in peers:
            optimum = optimum_venv(config.venv_root, create="optimum" in config.peers, timeout_s=config.venv_timeout_s,
                                   on_event=note)
        sdcpp = {"ready": False, "reason": "not requested"}
        if "sdcpp" in peers:
            sdcpp = sdcpp_venv(config.venv_root, create="sdcpp" in config.peers, timeout_s=config.sdcpp_venv_timeout_s,
                               on_event=note)
        rows = plan_rows(refs, config.sizes, config.backends, config.precisions, config.device, peers, probe, optimum, sdcpp)
        if config.memory:
            rows = add_rows(rows, config.memory)
        big = {ref.name for ref in refs if ref.arch == "sd15" or ref.resolution >= 512}
        if any(r.model in big and r.device == "cpu" and r.status == "planned" for r in rows):
            warn("sd15 on a CPU is slow (a 512 px U-Net step takes seconds to tens of seconds on 2 cores; its int8 "
                 "export calibrates for many minutes); --quick keeps it short")
        results = _run_rows(config, rows, refs, probe, {"optimum": optimum, "sdcpp": sdcpp}, cache, workdir, quiet)
        rep = report.build_report(config, rows, results, probe, optimum, refs, sdcpp)
        rep["parent"] = {"pid": os.getpid(), "heavy_modules_loaded": sorted(m for m in HEAVY if m in sys.modules)}
        rep["environment"]["load_average_1m"] = {"start": load_start, "end": _loadavg()}
        return rep
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run_rows(config: BenchConfig, rows: list, refs: list, probe: dict, venvs: dict[str, dict], cache: Path, workdir: Path,
              quiet: bool) -> dict[str, dict]:
    """Rounds: every row runs `rounds` times, each in a fresh process, the rows taking turns, so each row's samples
    come from several stretches of time (a shared machine is slow or fast for seconds to minutes)."""
    s = config.settings
    results: dict[str, dict] = {}
    by_name = {r.name: r for r in refs}
    runnable = [r for r in rows if r.status == "planned"]
    rounds = max(1, s.rounds)
    specs: dict[str, tuple[dict, dict]] = {}
    per_round: dict[str, list[dict]] = {}
    with Display(len(runnable) * rounds, quiet) as display:
        for k in range(rounds):
            for i, row in enumerate(runnable):
                if row.status == "failed":  # a failed round, or its preparation, ends the row
                    display.advance()
                    continue
                if k == 0:
                    display.status(f"{row.id}: preparing")
                    try:
                        sizes = config.sizes or [by_name[row.model].resolution]
                        specs[row.id] = _row_spec(row, by_name[row.model], s, cache, workdir, i, sizes, display.log,
                                                  probe.get("probe_baseline_s"))
                    except ShanshuiError as e:
                        row.status, row.reason = "failed", str(e)
                        display.log(f"{row.id}: failed: {e}")
                        display.advance()
                        continue
                spec, meta = specs[row.id]
                spec = {**spec, **round_share(s, rounds), "image": str(workdir / f"row{i}-r{k}.npy")}
                display.status(f"{row.id}: measuring" + (f" (round {k + 1} of {rounds})" if rounds > 1 else ""))
                if row.runner in PEER_SCRIPTS:
                    res = run_worker(spec, workdir, f"row{i}-r{k}", s.timeout_s, python=venvs[row.runner]["python"],
                                     script=PEER_SCRIPTS[row.runner])
                else:
                    res = run_worker(spec, workdir, f"row{i}-r{k}", s.timeout_s)
                per_round.setdefault(row.id, []).append(res)
                if not res.get("ok"):
                    row.status, row.reason = "failed", res.get("error")
                display.advance()
                if k == rounds - 1 or not res.get("ok"):
                    merged = merge_rounds(per_round[row.id])
                    merged.update(meta)
                    results[row.id] = merged
                    if res.get("ok"):
                        row.status, row.reason = "ok", None
                    display.log(report.one_line(row, merged))
    return results


def round_share(s: Settings, rounds: int) -> dict:
    """What one round of a row measures: its share of the repeats and of the minimum time (at least one of each)."""
    return {"repeats": max(1, math.ceil(s.repeats / rounds)), "stage_repeats": max(1, math.ceil(s.stage_repeats / rounds)),
            "min_time_s": s.min_time_s / rounds}


def merge_rounds(results: list[dict]) -> dict:
    """One row's result from its rounds: samples pooled, peaks the highest, the cold numbers and load from round 1
    (load: the median over rounds), every process id kept. A failed round fails the row."""
    bad = next((r for r in results if not r.get("ok")), None)
    if bad is not None:
        return bad
    out = json.loads(json.dumps(results[0]))  # a deep copy
    if len(results) == 1:
        out["pids"] = [out.get("pid")]
        return out
    out["pids"] = [r.get("pid") for r in results]
    out["rounds"] = len(results)
    loads = sorted(r["load_s"] for r in results)
    out["load_s"] = loads[len(loads) // 2]
    for key in ("rss_after_load_mb", "peak_rss_load_mb"):
        vals = [r.get(key) for r in results if r.get(key) is not None]
        out[key] = max(vals) if vals else None
    gen = out["generation"]
    for r in results[1:]:
        g = r["generation"]
        gen["runs_s"] += g["runs_s"]
        gen["steps_s"] += g["steps_s"]
        for k, v in g["split_s"].items():
            gen["split_s"].setdefault(k, []).extend(v)
        for key in ("peak_rss_mb", "gpu_peak_mb"):
            if g.get(key) is not None:
                gen[key] = max(gen.get(key) or 0, g[key])
        for name, st in r["stages"].items():
            mine = out["stages"][name]
            mine["runs_s"] += st["runs_s"]
            if st.get("gpu_runs_ms"):
                mine["gpu_runs_ms"] = mine.get("gpu_runs_ms", []) + st["gpu_runs_ms"]
            for key in ("peak_rss_mb", "gpu_peak_mb"):
                if st.get(key) is not None:
                    mine[key] = max(mine.get(key) or 0, st[key])
    if all(r.get("steadiness") for r in results):
        st = out["steadiness"]
        for key in ("rerun", "kept_disturbed", "waited_s", "probes"):
            st[key] = sum(r["steadiness"].get(key, 0) for r in results)
        st["gave_up"] = any(r["steadiness"].get("gave_up") for r in results)
    return out


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def _row_spec(row: Row, ref: ModelRef, s: Settings, cache: Path, workdir: Path, i: int, sizes: list[int],
              log: Callable[[str], None], probe_baseline_s: float | None = None) -> tuple[dict, dict]:
    """The worker spec of a row (making its model and export first when needed), and facts for the report."""

    def run_task(spec: dict) -> dict:  # model making and exports run in worker processes too
        return run_worker({**spec, "threads": s.threads}, workdir, f"prep{i}-{spec['task']}")

    if ref.arch is not None or ref.source is not None:
        prepare.ensure_model(ref, cache, run_task)
    uses_export = row.backend in ("onnxruntime", "tensorrt")
    if uses_export:
        model_dir = prepare.ensure_export(ref, row.precision, cache, run_task, log)
        meta = {"model_dir": str(model_dir), "disk_bytes": prepare.disk_bytes(model_dir, "onnx"),
                "component_precisions": prepare.component_precisions(model_dir)}
        if row.backend == "tensorrt":  # engines of the same precision, from the export of that precision
            engines = prepare.ensure_engines(model_dir, row.precision, sizes, run_task, log)
            plans = {p.name.split("-")[0]: p.stat().st_size for p in engines.glob("*.plan")}
            meta["disk_bytes"] = {**{c: plans.get(c, 0) for c in ("text_encoder", "unet", "vae_decoder")}, "total": sum(plans.values())}
    else:
        model_dir = ref.source
        meta = {"model_dir": str(model_dir), "disk_bytes": prepare.disk_bytes(model_dir, "diffusers"),
                "component_precisions": {c: row.precision for c in ("text_encoder", "unet", "vae_decoder")}}
    spec = {"task": "row", "runner": row.runner, "backend": row.backend, "device": row.device, "precision": row.precision,
            "model_dir": str(model_dir), "height": row.size, "width": row.size, "prompt": s.prompt, "seed": s.seed,
            "steps": s.steps, "guidance": s.guidance, "threads": s.threads, "warmup": s.warmup, "repeats": s.repeats,
            "stage_warmup": s.stage_warmup, "stage_repeats": s.stage_repeats, "image": str(workdir / f"row{i}.npy"),
            "steady": s.steady, "settle_s": s.settle_s, "min_time_s": s.min_time_s, "probe_baseline_s": probe_baseline_s}
    if row.memory:
        meta["memory"] = (diffusers_row(row.size) if row.runner == "diffusers"
                          else resolve_row(row.memory, Path(model_dir), row.size, s.guidance))
        spec["memory"] = meta["memory"]["strategy"]
        if row.runner != "diffusers":  # the strategy's settings: a budget may keep streamed parts (runtime/lowmem.py)
            spec["memory_settings"] = meta["memory"]["settings"]
    if row.runner == "sdcpp":  # the diffusers folder; sd.cpp converts its weights to the row's type while loading
        spec.update(weight_type=row.precision, steady_module=str(STEADY_MODULE), memory_module=str(MEMORY_MODULE))
    if row.runner == "optimum":
        spec["steady_module"] = str(STEADY_MODULE)  # loaded by path: that venv has no shanshui
        shapes, dims = _stage_inputs(model_dir, s.guidance, row.size, row.size)
        spec.update(stage_inputs=shapes, vocab_size=dims["vocab_size"], latent_channels=dims["latent_channels"],
                    vae_scale=dims["vae_scale"])
    return spec, meta

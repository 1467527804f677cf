"""`shanshui bench`: parse and check the options, run the benchmark, write the reports, compare with an older one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from shanshui import limits
from shanshui.bench.plan import DEFAULT_PROMPT, BenchBackend, Peer, Settings, parse_list, parse_sizes
from shanshui.bench.report import compare_reports, format_compare, load_report, write_reports
from shanshui.bench.runner import BenchConfig, run_bench
from shanshui.env import default_threads
from shanshui.errors import ShanshuiError
from shanshui.runtime.backends import Device
from shanshui.spec.contract import Precision
from shanshui.bench.lowmem import requests


MEMORY_HELP = {
    "low": "Also measure each ONNX Runtime CPU row in the smallest-memory mode (`generate --low-memory`), beside it.",
    "max": "Also measure each ONNX Runtime CPU row under the strategy this budget picks (e.g. 1G).",
    "names": "Also measure each ONNX Runtime CPU row under these memory strategies (comma-separated: lean, "
             "sequential, …), to see each one's effect.",
}


PEERS_HELP = ("Peers: diffusers (eager PyTorch, the baseline of the ratios), optimum (builds its own pinned venv on "
              "first use), sdcpp (stable-diffusion.cpp at q8_0 and f16 on the CPU; compiles its own venv on first "
              "use), or none.")


def bench(
    model: Annotated[Optional[List[str]], typer.Option("--model", "-m", help="Repeatable. A diffusers folder, an export folder, `default` (the shipped model), or an architecture "
             "(`tiny`, `sd15`: random weights made once into the cache; an existing folder of that name wins).")] = None,
    size: Annotated[Optional[str], typer.Option(help="Image sizes in pixels, comma-separated, e.g. 256,512 (default: each model's).")] = None,
    backends: Annotated[str, typer.Option(help="shanshui backends to measure, comma-separated.")] = "onnxruntime,torch,tensorrt",
    precisions: Annotated[str, typer.Option(help="Precisions to measure where a backend has them, comma-separated.")] = "fp32,fp16,int8",
    device: Annotated[Device, typer.Option(help="auto: the CPU, and the GPU when there is one.")] = Device.auto,
    peers: Annotated[str, typer.Option(help=PEERS_HELP)] = "diffusers",
    steps: Annotated[Optional[int], typer.Option(help="Sampling steps per generation (default 25; --quick: 4).")] = None,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = 7.5,
    prompt: Annotated[str, typer.Option(help="The prompt every row paints.")] = DEFAULT_PROMPT,
    seed: Annotated[int, typer.Option(help="Seed of the initial noise, shared by every row.")] = 0,
    warmup: Annotated[Optional[int], typer.Option(help="Warm-up generations per row, the first of them the cold run (default 1).")] = None,
    repeats: Annotated[Optional[int], typer.Option(help="Measured generations per row (default 3; --quick: 1).")] = None,
    stage_repeats: Annotated[Optional[int], typer.Option(help="Measured direct calls per stage (default 5, --quick too).")] = None,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for every row (default: SHANSHUI_THREADS or all cores).")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="A short run: 4 steps, 1 warm-up, 1 measured generation, 5 calls per stage.")] = False,
    min_time: Annotated[Optional[float], typer.Option("--min-time", help="Seconds of measured generations, and of direct "
                                             "calls per stage, at least (default 3; --quick: 1): short calls repeat.")] = None,
    rounds: Annotated[Optional[int], typer.Option(help="Times each row runs, each in a fresh process, the rows taking turns "
                                                    "(default 3): samples from several stretches of time.")] = None,
    steady: Annotated[bool, typer.Option("--steady/--no-steady", help="Probe CPU capacity around blocks of calls and re-run "
                                                                    "blocks another process disturbed (experimental, off by default).")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Report path stem: writes STEM.json, STEM.md and STEM.png "
                                                                 "(default: ./bench-report).")] = None,
    compare: Annotated[Optional[Path], typer.Option(help="An older report: print new/old per row.")] = None,
    load: Annotated[Optional[Path], typer.Option(help="Use this report instead of measuring (to --compare it, or re-render it with --out).")] = None,
    cache: Annotated[Optional[Path], typer.Option(help="Where made models and exports are kept (default: ~/.cache/shanshui/bench).")] = None,
    timeout: Annotated[Optional[float], typer.Option(help="Seconds one row may take before it is stopped and marked failed.")] = None,
    low_memory: Annotated[bool, typer.Option("--low-memory", help=MEMORY_HELP["low"])] = False,
    max_memory: Annotated[Optional[str], typer.Option("--max-memory", help=MEMORY_HELP["max"])] = None,
    memory_strategies: Annotated[Optional[str], typer.Option("--memory-strategies", help=MEMORY_HELP["names"])] = None,
):
    """Measure latency, memory and image quality per backend × precision, beside diffusers (and Optimum)."""
    _check_numbers(steps=steps, repeats=repeats, warmup=warmup, stage_repeats=stage_repeats, threads=threads,
                   rounds=rounds, min_time=min_time, timeout=timeout)
    limits.check_bench(seed, guidance, threads, steps, prompt, size)
    old = load_report(compare) if compare else None  # a bad --compare fails before a long run, not after
    if load is not None:
        report = load_report(load)
        if out is not None:
            for p in write_reports(report, out):
                typer.echo(f"wrote {p}")
    else:
        kw = dict(prompt=prompt, seed=seed, guidance=guidance, steps=steps, warmup=warmup, repeats=repeats,
                  stage_repeats=stage_repeats, threads=threads or default_threads() or os.cpu_count(), timeout_s=timeout,
                  steady=steady, min_time_s=min_time, rounds=rounds)
        settings = Settings.quick_settings(**kw) if quick else Settings(**{k: v for k, v in kw.items() if v is not None})
        if not prompt.strip():
            raise ShanshuiError("the prompt is empty; pass --prompt with a painting to describe")
        config = BenchConfig(
            models=list(model or ["default"]), sizes=parse_sizes(size), backends=parse_list(backends, BenchBackend, "backend"),
            precisions=parse_list(precisions, Precision, "precision"), device=device.value, settings=settings, cache=cache,
            peers=parse_list(peers, Peer, "peer"), memory=requests(low_memory, max_memory, memory_strategies))
        report = run_bench(config, warn=lambda s: typer.echo(f"warning: {s}", err=True), note=lambda s: typer.echo(s, err=True))
        for p in write_reports(report, out or Path("bench-report")):
            typer.echo(f"wrote {p}")
    if old is not None:
        typer.echo(format_compare(compare_reports(old, report), old, report))


def _check_numbers(steps, repeats, warmup, stage_repeats, threads, rounds, min_time, timeout) -> None:
    for name, v, low in (("steps", steps, 1), ("repeats", repeats, 1), ("warmup", warmup, 0), ("stage-repeats", stage_repeats, 1),
                         ("threads", threads, 1), ("rounds", rounds, 1)):
        if v is not None and v < low:
            raise ShanshuiError(f"--{name} must be at least {low}, got {v}")
    if min_time is not None and min_time < 0:
        raise ShanshuiError(f"--min-time must be zero or more seconds, got {min_time}")
    if timeout is not None and timeout <= 0:
        raise ShanshuiError(f"--timeout must be positive, got {timeout}")

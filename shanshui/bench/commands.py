"""`shanshui bench`: parse and check the options, run the benchmark, write the reports, compare with an older one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from shanshui.bench.plan import DEFAULT_PROMPT, BenchBackend, BenchPrecision, Peer
from shanshui import limits
from shanshui.errors import ShanshuiError
from shanshui.runtime.backends import Device


def bench(
    model: Optional[List[str]] = typer.Option(
        None, "--model", "-m",
        help="Repeatable. A diffusers folder, an export folder, `default` (the shipped model), or an architecture "
             "(`tiny`, `sd15`: random weights made once into the cache; an existing folder of that name wins)."),
    size: Optional[str] = typer.Option(None, help="Image sizes in pixels, comma-separated, e.g. 256,512 (default: each model's)."),
    backends: str = typer.Option("onnxruntime,torch,tensorrt", help="shanshui backends to measure, comma-separated."),
    precisions: str = typer.Option("fp32,fp16,int8", help="Precisions to measure where a backend has them, comma-separated."),
    device: Device = typer.Option(Device.auto, help="auto: the CPU, and the GPU when there is one."),
    peers: str = typer.Option("diffusers", help="Peers: diffusers (eager PyTorch, the baseline of the ratios), optimum "
                                                "(builds its own pinned venv on first use), or none."),
    steps: Optional[int] = typer.Option(None, help="Sampling steps per generation (default 25; --quick: 4)."),
    guidance: float = typer.Option(7.5, help="Classifier-free guidance scale."),
    prompt: str = typer.Option(DEFAULT_PROMPT, help="The prompt every row paints."),
    seed: int = typer.Option(0, help="Seed of the initial noise, shared by every row."),
    warmup: Optional[int] = typer.Option(None, help="Warm-up generations per row, the first of them the cold run (default 1)."),
    repeats: Optional[int] = typer.Option(None, help="Measured generations per row (default 3; --quick: 1)."),
    stage_repeats: Optional[int] = typer.Option(None, help="Measured direct calls per stage (default 5, --quick too)."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for every row (default: SHANSHUI_THREADS or all cores)."),
    quick: bool = typer.Option(False, "--quick", help="A short run: 4 steps, 1 warm-up, 1 measured generation, 5 calls per stage."),
    min_time: Optional[float] = typer.Option(None, "--min-time", help="Seconds of measured generations, and of direct "
                                             "calls per stage, at least (default 3; --quick: 1): short calls repeat."),
    rounds: Optional[int] = typer.Option(None, help="Times each row runs, each in a fresh process, the rows taking turns "
                                                    "(default 3): samples from several stretches of time."),
    steady: bool = typer.Option(False, "--steady/--no-steady", help="Probe CPU capacity around blocks of calls and re-run "
                                                                    "blocks another process disturbed (experimental, off by default)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Report path stem: writes STEM.json, STEM.md and STEM.png "
                                                                 "(default: ./bench-report)."),
    compare: Optional[Path] = typer.Option(None, help="An older report: print new/old per row."),
    load: Optional[Path] = typer.Option(None, help="Use this report instead of measuring (to --compare it, or re-render it with --out)."),
    cache: Optional[Path] = typer.Option(None, help="Where made models and exports are kept (default: ~/.cache/shanshui/bench)."),
    timeout: Optional[float] = typer.Option(None, help="Seconds one row may take before it is stopped and marked failed."),
):
    """Measure latency, memory and image quality per backend × precision, beside diffusers (and Optimum)."""
    from shanshui.bench.plan import Settings, parse_list, parse_sizes
    from shanshui.bench.report import compare_reports, format_compare, load_report, write_reports

    for name, v, low in (("steps", steps, 1), ("repeats", repeats, 1), ("warmup", warmup, 0), ("stage-repeats", stage_repeats, 1),
                         ("threads", threads, 1), ("rounds", rounds, 1)):
        if v is not None and v < low:
            raise ShanshuiError(f"--{name} must be at least {low}, got {v}")
    if min_time is not None and min_time < 0:
        raise ShanshuiError(f"--min-time must be zero or more seconds, got {min_time}")
    if timeout is not None and timeout <= 0:
        raise ShanshuiError(f"--timeout must be positive, got {timeout}")
    limits.check_bench(seed, guidance, threads, steps, prompt, size)
    old = load_report(compare) if compare else None  # a bad --compare fails before a long run, not after
    if load is not None:
        report = load_report(load)
        if out is not None:
            for p in write_reports(report, out):
                typer.echo(f"wrote {p}")
    else:
        from shanshui.bench.runner import BenchConfig, run_bench
        from shanshui.runtime.backends import default_threads

        kw = dict(prompt=prompt, seed=seed, guidance=guidance, steps=steps, warmup=warmup, repeats=repeats,
                  stage_repeats=stage_repeats, threads=threads or default_threads() or os.cpu_count(), timeout_s=timeout,
                  steady=steady, min_time_s=min_time, rounds=rounds)
        settings = Settings.quick_settings(**kw) if quick else Settings(**{k: v for k, v in kw.items() if v is not None})
        if not prompt.strip():
            raise ShanshuiError("the prompt is empty; pass --prompt with a painting to describe")
        config = BenchConfig(
            models=list(model or ["default"]), sizes=parse_sizes(size), backends=parse_list(backends, BenchBackend, "backend"),
            precisions=parse_list(precisions, BenchPrecision, "precision"), device=device.value,
            peers=parse_list(peers, Peer, "peer"), settings=settings, cache=cache)
        report = run_bench(config, warn=lambda s: typer.echo(f"warning: {s}", err=True), note=lambda s: typer.echo(s, err=True))
        for p in write_reports(report, out or Path("bench-report")):
            typer.echo(f"wrote {p}")
    if old is not None:
        typer.echo(format_compare(compare_reports(old, report), old, report))

"""The Markdown side of a bench report: machine and settings, one table row per measured row, what did not run."""

from __future__ import annotations
from shanshui.bench.lowmem import markdown as memory_table


def _ms(x) -> str:
    return "—" if x is None else f"{1000 * x:.0f}" if x < 10 else f"{1000 * x:,.0f}"


def _s(x) -> str:
    return "—" if x is None else f"{x:.2f}" if x < 100 else f"{x:.0f}"


def _mb(x) -> str:
    return "—" if x is None else f"{x:,.0f}"


def _x(x) -> str:
    return "—" if x is None else f"{x:.2f}×"


def _env_lines(env: dict) -> list[str]:
    flags = ", ".join(f for f, on in env.get("cpu_flags", {}).items() if on) or "none of note"
    missing = ", ".join(f for f in ("avx512f", "avx512_vnni", "avx_vnni", "amx_tile") if not env.get("cpu_flags", {}).get(f))
    v = env.get("versions", {})
    git = env.get("git", {})
    load = env.get("load_average_1m")
    rev = (git.get("revision") or "unknown")[:12] + (" (uncommitted changes)" if git.get("dirty") else "")
    return [
        f"- **Machine**: {env.get('cpu')} ({env.get('cores')} cores, {env.get('memory_gb')} GB); flags: {flags}"
        + (f"; no {missing}" if missing else ""),
        f"- **GPU**: {env.get('gpu') or 'none'}; ONNX Runtime providers: {', '.join(env.get('onnxruntime_providers', [])) or '—'}",
        f"- **Threads**: {env.get('threads') or 'runtime default'}; Python {env.get('python')}; "
        + ", ".join(f"{k} {v[k]}" for k in sorted(v)),
        f"- **Revision**: {rev}; {env.get('date')}; {env.get('os')}",
    ] + ([f"- **Load average** (1 min) at start / end: {load.get('start')} / {load.get('end')}"] if load else [])


def to_markdown(report: dict, chart: str | None = None) -> str:
    env, s = report["environment"], report["settings"]
    out = [f"# shanshui bench — {env.get('date', '')[:10]}", ""]
    out += _env_lines(env)
    out += [f"- **Settings**: prompt 「{s['prompt']}」, seed {s['seed']}, {s['steps']} steps of DPM-Solver++(2M), guidance "
            f"{s['guidance']}, 1 image; {s['warmup']} warm-up + {s['repeats']} measured generation(s) per row; stages: "
            f"{s['stage_warmup']} warm-up + {s['stage_repeats']} call(s)" + (" (--quick)" if s.get("quick") else ""), ""]
    if chart:
        out += [f"![latency chart]({chart})", ""]
    head = ["row", "load s", "1st gen s", "gen s (p90)", "U-Net step ms (p90)", "1st U-Net ms", "text enc ms", "VAE dec ms",
            "peak RSS MB", "GPU MB", "disk MB", "× diffusers gen / U-Net", "PSNR dB / SSIM vs ref"]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(_cells(r)) + " |" for r in report["rows"] if r["status"] == "ok"]
    if s.get("steady"):
        out += _steadiness(report, s)
    out += memory_table(report)
    not_run = [r for r in report["rows"] if r["status"] != "ok"]
    if not_run:
        out += ["", "Not run:", ""]
        out += [f"- `{r['id']}` ({r['status']}): {r.get('reason') or 'no reason recorded'}" for r in not_run]
    return "\n".join(out + _how_to_read(report, s))


def _cells(r: dict) -> list[str]:
    """One table row."""
    g, st = r["generation"], r["stages"] or {}
    un = st.get("unet_step") or {}
    q, sp = r.get("quality"), r.get("speedup_vs_diffusers")
    quality = "—" if not q else (f"identical / 1.0 vs {q['reference']}" if q.get("identical")
                                  else f"{q['psnr_db']:.1f} / {q['ssim']:.3f} vs {q['reference']}")
    disk = (r.get("disk_bytes") or {}).get("total")
    return [
        f"`{r['id']}`", _s(r["load_s"]), _s(g.get("first_s")), f"{_s(g.get('median_s'))} ({_s(g.get('p90_s'))})",
        f"{_ms(un.get('median_s'))} ({_ms(un.get('p90_s'))})"
        + (f" · GPU {un['gpu_median_ms']:.1f}" if un.get("gpu_median_ms") else ""), _ms(un.get("first_s")),
        _ms((st.get("text_encoder") or {}).get("median_s")), _ms((st.get("vae_decode") or {}).get("median_s")),
        _mb(g.get("peak_rss_mb")), _mb(g.get("gpu_peak_mb")), _mb(disk / 1e6 if disk else None),
        f"{_x((sp or {}).get('generation'))} / {_x((sp or {}).get('unet_step'))}", quality,
    ]


def _steadiness(report: dict, s: dict) -> list[str]:
    steady = [(r["id"], r.get("steadiness") or {}) for r in report["rows"] if r["status"] == "ok"]
    rerun = [f"`{rid}` {st.get('rerun', 0)} re-run" + (f", {st['kept_disturbed']} kept disturbed" if st.get("kept_disturbed") else "")
             for rid, st in steady if st.get("rerun") or st.get("kept_disturbed")]
    return ["", f"Steadiness (probe baseline {s.get('probe_baseline_ms') or '—'} ms, a call is disturbed when the probe "
                f"next to it is over {steady[0][1].get('tolerance', 1.5) if steady else 1.5}× that): "
            + ("; ".join(rerun) if rerun else "no call was disturbed") + "."]


def _how_to_read(report: dict, s: dict) -> list[str]:
    methods = sorted({r.get("memory_note") for r in report["rows"] if r.get("memory_note")})
    return ["", "How to read it:", "",
            ("- Each row ran in its own fresh process. " if (s.get("rounds") or 1) == 1 else
             f"- Each row ran {s['rounds']} times, each in a fresh process, the rows taking turns; its samples are pooled "
             "(*load*: the median of the rounds; *1st gen*, *1st U-Net*: the first round's). ")
            + "*load*: imports + model load. *1st gen*: the first (cold) "
            "generation after load; *gen*: median (p90) of the measured generations after warm-up.",
            "- *U-Net step*, *text enc*, *VAE dec*: each stage called directly on fixed inputs from the component "
            "contract (U-Net: batch 2 = one classifier-free-guided step; text encoder: prompt + negative prompt; VAE: one "
            "image); *1st U-Net*: the first step of the cold generation; *GPU*: CUDA-event milliseconds where the "
            "backend records them. TensorRT rows run engines with one static shape per benchmarked size.",
            "- *peak RSS*: high-water resident memory during the measured generations, model included ("
            + ("; ".join(methods) or "method not recorded") + "). *GPU MB*: peak GPU memory where a GPU was used. "
            "*disk*: the weights the row loads (ONNX files, or the safetensors of the diffusers folder, VAE encoder included).",
            "- *× diffusers*: diffusers' StableDiffusionPipeline (PyTorch eager, same model, size, steps, scheduler, "
            "threads, device) time ÷ this row's; above 1 is faster than diffusers.",
            "- *PSNR / SSIM*: the row's image against an fp32 row's (same prompt, seed and initial noise).",
            *_sdcpp_lines(report),
            f"- Generations and the direct calls of each stage went on for at least {s.get('min_time_s', 0)} s each "
            "(short calls repeat), so a median spans many of a shared machine's short slow spells. With `--steady`, "
            "a CPU capacity probe also ran around blocks of calls, and blocks another process disturbed were re-run "
            "(`shanshui/bench/steady.py`).", ""]


def _sdcpp_lines(report: dict) -> list[str]:
    if not any(r.get("runner") == "sdcpp" for r in report["rows"]):
        return []
    return ["- *sdcpp* rows: stable-diffusion.cpp (through stable-diffusion-cpp-python, its own venv, CPU backend) on the "
            "same diffusers weights, converted while loading to the row's weight type (q8_0, f16; *load* includes that "
            "conversion); DPM++ 2M with its discrete schedule. Its binding cannot call one stage alone, so its *U-Net "
            "step*, *text enc* and *VAE dec* (and their peak RSS) are measured inside its generations, from its own log "
            "lines (10 ms resolution). It draws its own initial noise and uses its own CLIP tokenizer, so its *PSNR / "
            "SSIM* is q8_0 against its own f16 image, not against the other rows."]

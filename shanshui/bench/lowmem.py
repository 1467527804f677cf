"""Low-memory rows of `shanshui bench`: each ONNX Runtime CPU row again under a memory strategy, compared with it.

    --low-memory              + one row per onnxruntime/cpu row under the smallest strategy the export allows
    --max-memory 1G           + one row under the strategy that budget picks (per model and size; too small fails the row)
    --memory-strategies a,b   + one row per named strategy (to measure each one's effect)

A row's id gets `/mem:<request>`; its record gets `memory` (the strategy run, its settings and the estimate made
before loading) and `vs_normal` (PSNR/SSIM of its image against the same row without a strategy: same model, size,
precision, seed). Torch-free.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from shanshui.errors import ShanshuiError
from shanshui.runtime.lowmem import BY_NAME, choose, footprint, lowest, parse_budget, usable
from shanshui.spec.manifest import read_manifest
from shanshui.metrics import psnr, ssim

LOW = "low"


def requests(low_memory: bool, max_memory: str | None, strategies: str | None) -> list[str]:
    """The memory requests of a run, checked before anything is measured: `low`, `budget:<size>`, strategy names."""
    out = [LOW] if low_memory else []
    if max_memory is not None:
        parse_budget(max_memory)
        out.append(f"budget:{max_memory}")
    for name in [t.strip() for t in (strategies or "").split(",") if t.strip()]:
        if name not in BY_NAME:
            raise ShanshuiError(f"memory strategy {name!r} is not one of {', '.join(BY_NAME)}")
        out.append(name)
    return list(dict.fromkeys(out))


# diffusers' lowest-memory settings on a CPU: attention in one-head slices and the VAE decoded in 2 × 2 tiles (its
# default tile is the model's sample size, so an SD 1.5 VAE at 512 px would not tile). Its CPU offloads move
# weights to the CPU between uses on an accelerator: with no accelerator there is nothing to offload to.
DIFFUSERS_LOW = "attention-slicing+vae-tiling"


def add_rows(rows: list, memory: list[str]) -> list:
    """After each planned onnxruntime/cpu row of shanshui, its copies under each memory request; after each planned
    diffusers CPU row, one with diffusers' lowest-memory settings (the peer's low-memory mode)."""
    out = []
    for r in rows:
        out.append(r)
        if r.status != "planned" or r.device != "cpu":
            continue
        if r.runner == "shanshui" and r.backend == "onnxruntime":
            out.extend(replace(r, memory=m) for m in memory)
        elif r.runner == "diffusers" and memory:
            out.append(replace(r, memory=LOW))
    return out


def diffusers_row(size: int) -> dict:
    """The memory record of a diffusers low-memory row."""
    return {"request": LOW, "strategy": DIFFUSERS_LOW, "estimated_peak_mb": None, "estimated_stages_mb": {},
            "settings": {"attention_slicing": "max", "vae_tiling": True, "vae_tile_px": size // 2 + size // 8}}


def configure_diffusers(pipe, size: int) -> None:
    """Apply DIFFUSERS_LOW to a StableDiffusionPipeline painting `size` px images."""
    pipe.enable_attention_slicing("max")
    vae = pipe.vae
    vae.enable_tiling()
    tile = size // 2 + size // 8  # two tiles per side overlapping by a quarter, as shanshui's tiled VAE
    vae.tile_sample_min_size = tile
    vae.tile_latent_min_size = tile // 2 ** (len(vae.config.block_out_channels) - 1)


def resolve_row(request: str, export: Path, size: int, guidance: float) -> dict:
    """The strategy a row runs and the estimate, before the worker loads anything."""
    manifest = read_manifest(export)
    if manifest is None:
        raise ShanshuiError(f"{export} is not a shanshui export")
    cfg = dict(h=size, w=size, n=1, guidance=guidance != 1)
    if request.startswith("budget:"):
        strategy, est = choose(export, manifest, parse_budget(request.split(":", 1)[1]), **cfg)
    elif request == LOW:
        strategy, est = lowest(export, manifest, **cfg)
    else:
        strategy = BY_NAME[request]
        if not usable(strategy, manifest):
            raise ShanshuiError(f"{strategy.name} needs an export whose U-Net is cut into parts (shanshui.export.split)")
        est = footprint(export, manifest, strategy, **cfg)
    return {"request": request, "strategy": strategy.name, "settings": strategy.as_dict(),
            "estimated_peak_mb": round(est["peak_mb"], 1),
            "estimated_stages_mb": {k: round(v, 1) for k, v in est["stages_mb"].items()}}


def add_vs_normal(records: list[dict], images: dict) -> None:
    """PSNR/SSIM of each memory row's image against its row without a strategy (same everything else)."""
    import math

    for rec in records:
        if not rec.get("memory") or rec["status"] != "ok" or rec["id"] not in images:
            continue
        base_id = rec["id"].rsplit("/mem:", 1)[0]
        if base_id not in images or images[base_id].shape != images[rec["id"]].shape:
            continue
        a, b = images[rec["id"]], images[base_id]
        p = psnr(a, b)
        rec["vs_normal"] = {"reference": base_id, "psnr_db": None if math.isinf(p) else round(p, 2),
                            "ssim": round(ssim(a, b), 4), "identical": math.isinf(p)}


def markdown(report: dict) -> list[str]:
    """A table of the memory rows beside their normal rows: peak RSS, estimate, stage peaks, time ratio, PSNR."""
    rows = {r["id"]: r for r in report["rows"] if r["status"] == "ok"}
    mem = [r for r in rows.values() if r.get("memory")]
    if not mem:
        return []
    out = ["", "Low-memory rows (each against the same row with everything resident; stage peaks from direct calls):", "",
           "| row | strategy | peak RSS MB (normal) | estimated MB | text enc / U-Net / VAE peak MB | gen s × normal "
           "| PSNR dB vs normal |", "|---|---|---|---|---|---|---|"]
    for r in mem:
        base = rows.get(r["id"].rsplit("/mem:", 1)[0])
        g, m, st = r["generation"], r["memory"], r.get("stages") or {}
        peak = g.get("peak_rss_mb")
        normal = (base or {}).get("generation", {}).get("peak_rss_mb")
        ratio = (g.get("median_s") / base["generation"]["median_s"]) if base and base["generation"].get("median_s") else None
        stages = " / ".join(f"{(st.get(k) or {}).get('peak_rss_mb') or 0:,.0f}" for k in ("text_encoder", "unet_step", "vae_decode"))
        q = r.get("vs_normal") or {}
        psnr = "identical" if q.get("identical") else (f"{q['psnr_db']:.1f}" if q.get("psnr_db") is not None else "—")
        est = f"{m['estimated_peak_mb']:,.0f}" if m.get("estimated_peak_mb") is not None else "—"
        out.append(f"| `{r['id']}` | {m['strategy']} | {peak:,.0f} ({normal:,.0f}) | {est} | "
                   f"{stages} | {f'{ratio:.2f}×' if ratio else '—'} | {psnr} |" if normal else
                   f"| `{r['id']}` | {m['strategy']} | {peak:,.0f} (—) | {est} | {stages} | — | {psnr} |")
    return out

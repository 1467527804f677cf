"""`shanshui lowmem`: make an export's low-memory form: fused attention, and the U-Net cut into parts to stream."""

from __future__ import annotations

import shutil
from pathlib import Path

import typer

from shanshui.errors import ShanshuiError
from shanshui.export.attention import fuse_export
from shanshui.export.external import externalize_export
from shanshui.spec.manifest import open_exported
from shanshui.export.split import split_export
from shanshui.export.vae_segments import segment_export


def lowmem(
    export_dir: Path = typer.Argument(..., help="An export folder (from `shanshui export`, fp32 for streaming)."),
    out_dir: Path = typer.Argument(..., help="New folder for the low-memory export (files hard-linked where possible)."),
    fuse_attention: bool = typer.Option(True, "--fuse-attention/--no-fuse-attention", help="Each U-Net attention as one "
                                        "MultiHeadAttention (ONNX Runtime's blocked CPU kernel: no score tensor)."),
    parts: int = typer.Option(8, help="Cut the U-Net into this many parts for `generate --low-memory` to stream "
                                      "(load, run, free each part every step); 0 keeps it whole."),
    text_parts: int = typer.Option(-1, help="Cut the text encoder into this many parts too, streamed with the U-Net "
                                           "(SD 1.5's fp16 encoder: 638 MB whole, 214 MB in 4 parts, same output); "
                                           "-1: as many as keep each about as heavy as a U-Net part; 0: whole."),
    external_weights: bool = typer.Option(True, "--external-weights/--inline-weights", help="Each graph's weights "
                                          "in a file beside it, which ONNX Runtime maps instead of copying."),
    vae_segments: bool = typer.Option(True, "--vae-segments/--no-vae-segments", help="Cut the VAE decoder at its "
                                      "group norms, so `--low-memory` decodes in small tiles that match the whole "
                                      "decode (each norm fed the whole image's statistics)."),
):
    """Make a low-memory export: fused attention and a U-Net cut into parts, for `generate --low-memory`."""
    exported = open_exported(export_dir)  # a bad folder fails before anything is written
    if fuse_attention and exported.manifest.get("precision") == "int8":
        # fused after quantization, ONNX Runtime runs the int8 graph with other kernels around the attentions and the
        # int8 rounding carries the change through every step: the shipped model's image moved to 30 dB from its int8
        # self. An int8 export quantized from a fused fp32 one paints the same image in every memory mode.
        raise ShanshuiError("attention fusion is for fp32/fp16 exports (fused after quantization the image changes); "
                            "pass --no-fuse-attention, or fuse the fp32 export first and quantize that "
                            "(`shanshui lowmem FP32 FUSED --parts 0`, then `shanshui quantize FUSED INT8 --precision int8`)")
    if out_dir.exists():
        raise ShanshuiError(f"{out_dir} already exists; choose a new folder")
    if (parts != 0 and not 2 <= parts <= 64) or not -1 <= text_parts <= 64:
        raise ShanshuiError(f"--parts must be 0 (whole) or 2-64 (got {parts}), --text-parts -1 (auto), 0 (whole) "
                            f"or 2-64 (got {text_parts})")
    if not (fuse_attention or parts or external_weights or vae_segments):
        raise ShanshuiError("nothing to do: give --fuse-attention, --parts, --external-weights or --vae-segments")
    steps = [s for s, on in (("fused", fuse_attention), ("external", external_weights), ("split", parts),
                             ("segments", vae_segments)) if on]
    # stage folders named so that no step's own temp-folder cleanup (`.OUT.*`) takes them for leftovers
    stages = {s: out_dir.with_name(f".{out_dir.name}-{s}") for s in steps[:-1]} | {steps[-1]: out_dir}
    for folder in list(stages.values())[:-1]:
        shutil.rmtree(folder, ignore_errors=True)
    try:
        src = export_dir
        if fuse_attention:
            m = fuse_export(src, stages["fused"], check_size=None)
            typer.echo(f"  fused {m['components']['unet']['attention']['fused']} attentions", err=True)
            src = stages["fused"]
        if external_weights:
            m, moved = externalize_export(src, stages["external"])
            typer.echo(f"  weights beside the graph: {', '.join(moved) or 'all were already'}", err=True)
            src = stages["external"]
        if parts:
            m = split_export(src, stages["split"], parts, None if text_parts < 0 else text_parts)
            _echo_parts(m)
            src = stages["split"]
        if vae_segments:
            m = segment_export(src, stages["segments"])
            segs = m["components"]["vae_decoder"]["segments"]
            typer.echo(f"  VAE decoder in {len(segs)} segments ({sum(s['tiled'] for s in segs)} run in tiles)", err=True)
    finally:
        for folder in list(stages.values())[:-1]:
            shutil.rmtree(folder, ignore_errors=True)
    typer.echo(f"wrote {out_dir}")


def _echo_parts(manifest: dict) -> None:
    for comp, label in (("unet", "U-Net"), ("text_encoder", "text encoder")):
        sizes = [p["weight_bytes"] / 2**20 for p in manifest["components"][comp].get("parts") or ()]
        if sizes:
            typer.echo(f"  {label} in {len(sizes)} parts of {min(sizes):.0f}–{max(sizes):.0f} MB", err=True)

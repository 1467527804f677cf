"""`shanshui init`, `export` and `quantize`: make a model folder, export it to ONNX, lower its precision."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from shanshui.errors import ShanshuiError
from shanshui import limits, models
from shanshui.quantize.convert import export_at, quantize_export
from shanshui.spec.contract import Precision, QuantizePrecision
from shanshui.train.arch import Arch, init_model


class Int8Target(str, enum.Enum):
    cpu = "cpu"
    tensorrt = "tensorrt"


INT8_TARGET_HELP = ("int8 only. cpu: uint8 activations with zero points (ONNX Runtime's fast u8×s8 kernels); "
                    "tensorrt: symmetric int8 activations, the Q/DQ form TensorRT builds engines from.")


def init(
    out: Annotated[Path, typer.Argument(help="New folder for the diffusers pipeline.")],
    arch: Annotated[Arch, typer.Option(help="tiny: the shanshui default (≤ 25 M parameters, 256 px); sd15: Stable Diffusion 1.5 shapes.")] = Arch.tiny,
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
):
    """Write a random-weight model folder (diffusers layout) for an architecture."""

    limits.check_seed(seed)
    limits.new_folder(out, "model folder")
    summary = init_model(arch.value, out, seed=seed)
    p = summary["parameters"]
    typer.echo(
        f"wrote {out} ({arch.value}: {p['total'] / 1e6:.1f} M parameters — text encoder {p['text_encoder'] / 1e6:.1f} M, "
        f"U-Net {p['unet'] / 1e6:.1f} M, VAE {p['vae'] / 1e6:.1f} M)"
    )


def export(
    model_dir: Annotated[Optional[Path], typer.Argument(help="diffusers model folder; default: the shipped model.")] = None,
    out_dir: Annotated[Optional[Path], typer.Argument(help="Output folder; default: ./<model>-onnx-<precision>.")] = None,
    precision: Annotated[Precision, typer.Option(help="Weight precision of the exported graphs.")] = Precision.fp32,
    height: Annotated[Optional[int], typer.Option(help="Image height the graphs are optimised and checked for (default: the model's).")] = None,
    width: Annotated[Optional[int], typer.Option(help="Image width the graphs are optimised and checked for (default: the model's).")] = None,
    max_batch: Annotated[int, typer.Option(help="Largest number of images per call in the shape profiles.")] = 4,
    no_check: Annotated[bool, typer.Option("--no-check", help="Skip the image quality gate of lower precisions.")] = False,
    int8_target: Annotated[Int8Target, typer.Option(help=INT8_TARGET_HELP)] = Int8Target.cpu,
):
    """Export text encoder, U-Net and VAE decoder to ONNX, each checked against PyTorch (and fp16 against fp32)."""

    if model_dir is None:
        model_dir = models.default_source_path()
        if model_dir is None:
            raise ShanshuiError("no default model ships with this install yet; pass MODEL_DIR (e.g. one made by `shanshui init`)")
    events = {"skip": "unchanged, kept", "export": "exporting and checking against PyTorch…", "done": "done"}
    manifest = export_at(
        model_dir, out_dir, precision=precision.value, height=height, width=width, max_batch=max_batch,
        on_event=lambda comp, what: typer.echo(f"  {comp}: {events.get(what, what)}", err=True), check=not no_check,
        int8_target=int8_target.value,
    )
    _print_export(manifest)


def _print_export(manifest: dict) -> None:
    for name, entry in manifest["components"].items():
        worst = max(entry["parity"], key=lambda p: p["max_abs_error"] / p["allowed"])
        size = sum(entry["files"].values()) / 1e6
        prec = manifest.get("quantization", {}).get(name, {}).get("precision", manifest["precision"])
        typer.echo(f"  {name:13s} {prec:5s} {size:9.1f} MB   fp32 max |onnx - torch| {worst['max_abs_error']:.2e} "
                   f"(allowed {worst['allowed']:.1e})")
    gate = manifest.get("gate")
    if gate:
        typer.echo(f"  quality gate vs fp32: worst PSNR {gate['worst']['psnr_db']} dB, SSIM {gate['worst']['ssim']} "
                   f"(floors {gate['floors']}); U-Net step SNR {min(gate['unet_step_snr_db'])}–{max(gate['unet_step_snr_db'])} dB")
        agreement = gate.get("attribute_agreement", {})
        if agreement.get("available"):
            typer.echo(f"  attributes read alike in fp32 and {gate['precision']} images: {agreement['mean']:.0%} (eval's classifier)")
    typer.echo(f"wrote {manifest['out_dir']}")


def quantize(
    in_dir: Annotated[Path, typer.Argument(help="An fp32 export folder (from `shanshui export`).")],
    out_dir: Annotated[Path, typer.Argument(help="Output folder for the lower-precision export.")],
    precision: Annotated[QuantizePrecision, typer.Option(help="Target precision.")] = QuantizePrecision.fp16,
    no_check: Annotated[bool, typer.Option("--no-check", help="Skip the image quality gate against fp32.")] = False,
    int8_target: Annotated[Int8Target, typer.Option(help=INT8_TARGET_HELP)] = Int8Target.cpu,
):
    """Convert an fp32 export to a lower precision, gated on image quality against fp32."""

    manifest = quantize_export(in_dir, out_dir, precision.value, check=not no_check, int8_target=int8_target.value,
                               on_event=lambda comp, what: typer.echo(f"  {comp}: {what}", err=True))
    _print_export(manifest)

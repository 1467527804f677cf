"""`shanshui train vae|unet`: thin commands over shanshui.train.vae and shanshui.train.unet."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from shanshui.train.arch import Arch
from shanshui.train.unet import UnetConfig, train_unet
from shanshui.train.vae import VaeConfig, train_vae

app = typer.Typer(help="Train the VAE, then text encoder + U-Net, on rendered or real paintings.", no_args_is_help=True)


class PredictionType(str, enum.Enum):
    epsilon = "epsilon"
    v_prediction = "v_prediction"


class MixedPrecision(str, enum.Enum):
    no = "no"
    fp16 = "fp16"
    bf16 = "bf16"


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"),
                    TimeRemainingColumn())


@app.command()
def vae(
    data: Annotated[Path, typer.Argument(help="Image folder (metadata.jsonl or .txt sidecars).")],
    out: Annotated[Path, typer.Argument(help="Output folder for the VAE (diffusers AutoencoderKL); resumes from its checkpoints.")],
    steps: Annotated[int, typer.Option(help="Optimiser steps.")] = 2000,
    batch: Annotated[int, typer.Option(help="Crops per step.")] = 16,
    crop: Annotated[int, typer.Option(help="Random crop size in pixels.")] = 128,
    size: Annotated[int, typer.Option(help="Images are resized and centre-cropped to this size first.")] = 256,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 4e-4,
    mixed_precision: Annotated[MixedPrecision, typer.Option(help="On CUDA, and on CPUs with bf16 instructions (AVX512_BF16/AMX); other CPUs train in fp32.")] = MixedPrecision.bf16,
    seed: Annotated[int, typer.Option()] = 0,
    colour_weight: Annotated[float, typer.Option(help="Weight of the colour term (MSE of 8×8-pooled images: tone and tint).")] = VaeConfig.colour_weight,
    edge_weight: Annotated[float, typer.Option(help="Weight of the edge term (L1 of image gradients: ink lines).")] = VaeConfig.edge_weight,
):
    """Train the VAE (AutoencoderKL, 8× downsampling); reports held-out PSNR/SSIM."""

    cfg = VaeConfig(steps=steps, batch=batch, crop=crop, size=size, lr=lr, mixed_precision=mixed_precision.value, seed=seed,
                    colour_weight=colour_weight, edge_weight=edge_weight)
    with _progress() as p:
        task = p.add_task("training VAE", total=steps, loss=0.0)
        report = train_vae(data, out, cfg, progress=lambda i, n, loss: p.update(task, completed=i, loss=loss))
    typer.echo(f"wrote {out}: held-out PSNR {report['held_out_psnr_db']} dB, SSIM {report['held_out_ssim']}, "
               f"scaling factor {report['scaling_factor']}")


@app.command()
def unet(
    data: Annotated[Path, typer.Argument(help="Image folder (metadata.jsonl or .txt sidecars).")],
    out: Annotated[Path, typer.Argument(help="Output diffusers pipeline folder; resumes from its checkpoints.")],
    vae_dir: Annotated[Path, typer.Option("--vae", help="A VAE trained by `shanshui train vae`.")],
    steps: Annotated[int, typer.Option(help="Optimiser steps.")] = 20000,
    batch: Annotated[int, typer.Option(help="Images per step.")] = 32,
    lr: Annotated[float, typer.Option(help="Peak learning rate of the U-Net (the text encoder gets half).")] = 3e-4,
    size: Annotated[int, typer.Option(help="Training image size.")] = 256,
    sample_every: Annotated[int, typer.Option(help="Save a sample grid every N steps (0: never).")] = 1000,
    checkpoint_every: Annotated[int, typer.Option(help="Save a checkpoint every N steps.")] = 1000,
    mixed_precision: Annotated[MixedPrecision, typer.Option(help="On CUDA, and on CPUs with bf16 instructions (AVX512_BF16/AMX); other CPUs train in fp32.")] = MixedPrecision.bf16,
    seed: Annotated[int, typer.Option()] = 0,
    arch: Annotated[Arch, typer.Option(help="Architecture of text encoder and U-Net.")] = Arch.tiny,
    text_lr_scale: Annotated[float, typer.Option(help="The text encoder's learning rate as a fraction of --lr.")] = 0.5,
    warmup: Annotated[int, typer.Option(help="Linear learning-rate warm-up steps.")] = 500,
    ema_decay: Annotated[float, typer.Option(help="EMA decay of the saved weights (lower for short fine-tunes).")] = 0.999,
    text_pretrain_steps: Annotated[int, typer.Option(help="Attribute pre-training steps of the text encoder before the U-Net (0: off).")] = 600,
    init_from: Annotated[Optional[Path], typer.Option(help="Start from this trained pipeline's text encoder, U-Net and tokenizer.")] = None,
    prediction_type: Annotated[Optional[PredictionType], typer.Option(help="Override the architecture's prediction type (ablations).")] = None,
    zero_snr: Annotated[Optional[bool], typer.Option("--zero-snr/--no-zero-snr", help="Override the architecture's zero-terminal-SNR schedule.")] = None,
    text_time_embed: Annotated[Optional[bool], typer.Option("--text-time-embed/--no-text-time-embed", help="Override the architecture's pooled text embedding in the time embedding.")] = None,
    fresh_captions: Annotated[bool, typer.Option("--fresh-captions/--stored-captions", help="Rendered data: draw a new true caption from each painting's scene at every visit, or use the captions stored with it.")] = True,
):
    """Train text encoder + U-Net jointly with the DDPM objective; writes a diffusers pipeline folder."""

    cfg = UnetConfig(arch=arch.value, steps=steps, batch=batch, lr=lr, size=size, sample_every=sample_every,
                     checkpoint_every=checkpoint_every, mixed_precision=mixed_precision.value, seed=seed,
                     text_lr_scale=text_lr_scale, text_pretrain_steps=text_pretrain_steps, warmup=warmup, ema_decay=ema_decay,
                     init_from=str(init_from) if init_from else None,
                     prediction_type=prediction_type.value if prediction_type else None, zero_snr=zero_snr,
                     text_time_embed=text_time_embed, fresh_captions=fresh_captions)
    with _progress() as p:
        tasks: dict = {}

        def update(stage: str, i: int, n: int, loss: float) -> None:
            if stage not in tasks:
                tasks[stage] = p.add_task(stage, total=n, loss=0.0)
            p.update(tasks[stage], completed=i, loss=loss)

        summary = train_unet(data, out, vae_dir, cfg, progress=update)
    typer.echo(f"wrote {out} ({summary['parameters']['total'] / 1e6:.1f} M parameters, {summary['steps']} steps)")

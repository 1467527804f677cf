"""`shanshui train vae|unet`: thin commands over shanshui.train.vae and shanshui.train.unet."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Optional

import typer

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
    data: Path = typer.Argument(..., help="Image folder (metadata.jsonl or .txt sidecars)."),
    out: Path = typer.Argument(..., help="Output folder for the VAE (diffusers AutoencoderKL); resumes from its checkpoints."),
    steps: int = typer.Option(2000, help="Optimiser steps."),
    batch: int = typer.Option(16, help="Crops per step."),
    crop: int = typer.Option(128, help="Random crop size in pixels."),
    size: int = typer.Option(256, help="Images are resized and centre-cropped to this size first."),
    lr: float = typer.Option(4e-4, help="Peak learning rate."),
    mixed_precision: MixedPrecision = typer.Option(MixedPrecision.bf16, help="On CUDA, and on CPUs with bf16 instructions (AVX512_BF16/AMX); other CPUs train in fp32."),
    seed: int = typer.Option(0),
):
    """Train the VAE (AutoencoderKL, 8× downsampling); reports held-out PSNR/SSIM."""
    from shanshui.train.vae import VaeConfig, train_vae

    cfg = VaeConfig(steps=steps, batch=batch, crop=crop, size=size, lr=lr, mixed_precision=mixed_precision.value, seed=seed)
    with _progress() as p:
        task = p.add_task("training VAE", total=steps, loss=0.0)
        report = train_vae(data, out, cfg, progress=lambda i, n, loss: p.update(task, completed=i, loss=loss))
    typer.echo(f"wrote {out}: held-out PSNR {report['held_out_psnr_db']} dB, SSIM {report['held_out_ssim']}, "
               f"scaling factor {report['scaling_factor']}")


@app.command()
def unet(
    data: Path = typer.Argument(..., help="Image folder (metadata.jsonl or .txt sidecars)."),
    out: Path = typer.Argument(..., help="Output diffusers pipeline folder; resumes from its checkpoints."),
    vae_dir: Path = typer.Option(..., "--vae", help="A VAE trained by `shanshui train vae`."),
    steps: int = typer.Option(20000, help="Optimiser steps."),
    batch: int = typer.Option(32, help="Images per step."),
    lr: float = typer.Option(3e-4, help="Peak learning rate of the U-Net (the text encoder gets half)."),
    size: int = typer.Option(256, help="Training image size."),
    sample_every: int = typer.Option(1000, help="Save a sample grid every N steps (0: never)."),
    checkpoint_every: int = typer.Option(1000, help="Save a checkpoint every N steps."),
    mixed_precision: MixedPrecision = typer.Option(MixedPrecision.bf16, help="On CUDA, and on CPUs with bf16 instructions (AVX512_BF16/AMX); other CPUs train in fp32."),
    seed: int = typer.Option(0),
    arch: Optional[str] = typer.Option("tiny", help="Architecture of text encoder and U-Net."),
    text_lr_scale: float = typer.Option(0.5, help="The text encoder's learning rate as a fraction of --lr."),
    warmup: int = typer.Option(500, help="Linear learning-rate warm-up steps."),
    ema_decay: float = typer.Option(0.999, help="EMA decay of the saved weights (lower for short fine-tunes)."),
    text_pretrain_steps: int = typer.Option(600, help="Attribute pre-training steps of the text encoder before the U-Net (0: off)."),
    init_from: Optional[Path] = typer.Option(None, help="Start from this trained pipeline's text encoder, U-Net and tokenizer."),
    prediction_type: Optional[PredictionType] = typer.Option(None, help="Override the architecture's prediction type (ablations)."),
    zero_snr: Optional[bool] = typer.Option(None, "--zero-snr/--no-zero-snr", help="Override the architecture's zero-terminal-SNR schedule."),
    text_time_embed: Optional[bool] = typer.Option(None, "--text-time-embed/--no-text-time-embed",
                                                   help="Override the architecture's pooled text embedding in the time embedding."),
):
    """Train text encoder + U-Net jointly with the DDPM objective; writes a diffusers pipeline folder."""
    from shanshui.train.unet import UnetConfig, train_unet

    cfg = UnetConfig(arch=arch, steps=steps, batch=batch, lr=lr, size=size, sample_every=sample_every,
                     checkpoint_every=checkpoint_every, mixed_precision=mixed_precision.value, seed=seed,
                     text_lr_scale=text_lr_scale, text_pretrain_steps=text_pretrain_steps, warmup=warmup, ema_decay=ema_decay,
                     init_from=str(init_from) if init_from else None,
                     prediction_type=prediction_type.value if prediction_type else None, zero_snr=zero_snr,
                     text_time_embed=text_time_embed)
    with _progress() as p:
        tasks: dict = {}

        def update(stage: str, i: int, n: int, loss: float) -> None:
            if stage not in tasks:
                tasks[stage] = p.add_task(stage, total=n, loss=0.0)
            p.update(tasks[stage], completed=i, loss=loss)

        summary = train_unet(data, out, vae_dir, cfg, progress=update)
    typer.echo(f"wrote {out} ({summary['parameters']['total'] / 1e6:.1f} M parameters, {summary['steps']} steps)")

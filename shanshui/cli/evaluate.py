"""`shanshui eval`: does a model paint what its prompt says, attribute by attribute."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from shanshui import limits
from shanshui.eval.evaluate import evaluate_model
from shanshui.fsutil import write_json_atomic


def eval_(
    model: Annotated[Path, typer.Argument(help="A diffusers folder (PyTorch) or an export folder (ONNX Runtime).")],
    prompts: Annotated[int, typer.Option(help="Held-out prompts to paint (half Chinese, half English).")] = 64,
    steps: Annotated[int, typer.Option(help="Sampling steps per image.")] = 20,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = 5.0,
    grid: Annotated[Optional[Path], typer.Option(help="Save a 16-prompt sample grid (8 Chinese, 8 English) here.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the report as JSON here.")] = None,
    swap_seeds: Annotated[int, typer.Option(help="Seeds of the prompt swap (same seeds, prompts differing in one attribute); 0 skips it.")] = 6,
    swap_grid: Annotated[Optional[Path], typer.Option(help="Save the prompt-swap grid (rows prompts, columns seeds) here.")] = None,
):
    """Score how well generated paintings follow their prompts, attribute by attribute."""

    limits.check_eval(prompts, steps, guidance, swap_seeds, grid, json_out, swap_grid)
    report = evaluate_model(model, prompts=prompts, steps=steps, guidance=guidance, grid=grid,
                            progress=lambda s: typer.echo(s, err=True), swap_seeds=swap_seeds, swap_grid=swap_grid)
    typer.echo(f"{'attribute':12s} {'generated':>9s} {'ceiling':>8s} {'chance':>7s}  n")
    for k, v in report["attribute_accuracy"].items():
        typer.echo(f"{k:12s} {v:9.3f} {report['classifier_ceiling'][k]:8.3f} {report['chance'][k]:7.3f}  {report['attribute_support'][k]}")
    typer.echo(f"mean accuracy {report['mean_accuracy']:.3f}")
    if "prompt_swap" in report:
        sw = report["prompt_swap"]
        typer.echo(f"prompt swap ({sw['seeds']} seeds × {', '.join(sw['langs'])}): accuracy / ceiling")
        for k, v in sw["accuracy"].items():
            typer.echo(f"  {k:12s} {v:6.3f} / {sw['ceiling'][k]:.3f} = {sw['of_ceiling'][k]:.2f} of ceiling")
        for name, c in sw["contrasts"].items():
            typer.echo(f"  {name}: {c['holds']} of {c['of']}")
        typer.echo(f"  U-Net conditional effect |out(c) − out(u)| / |out(u)|: {sw['effect_size']}")
    if report["vae"]:
        vae = report["vae"]
        typer.echo(f"VAE reconstruction: PSNR {vae['psnr_db']} dB, SSIM {vae['ssim']}, colour shift {vae['colour_shift_rgb']} (RGB)")
        if "read_reconstructions" in vae:
            typer.echo("attributes read on renders → through the VAE: " + ", ".join(
                f"{k} {vae['read_renders'][k]:.2f}→{v:.2f}" for k, v in vae["read_reconstructions"].items()))
    if json_out:
        write_json_atomic(json_out, report)
        typer.echo(f"wrote {json_out}")
    if grid:
        typer.echo(f"wrote {grid}")

"""`shanshui data ...` commands: thin wrappers that validate options and call one library function each."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from shanshui.data.dataset import render_dataset

app = typer.Typer(
    help="Training data: procedural shan shui paintings (山水画) with exact bilingual captions.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _group() -> None:
    """Training data: procedural shan shui paintings (山水画) with exact bilingual captions."""


class Fmt(str, Enum):
    """Which painting formats to render."""

    mixed = "mixed"
    square = "square"
    tall = "tall"
    wide = "wide"


@app.command("render")
def render_cmd(
    out: Path = typer.Argument(..., help="Folder to write (imagefolder: images/*.png + metadata.jsonl); re-run to resume."),
    count: int = typer.Option(1000, "--count", "-n", help="How many images the data set holds."),
    size: int = typer.Option(256, "--size", help="Image side in pixels, a multiple of 8 (64..2048)."),
    seed: int = typer.Option(0, "--seed", help="Data set seed; image i uses a scene seed derived from (seed, i)."),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", help="Processes to use [default: every core]."),
    fmt: Fmt = typer.Option(Fmt.mixed, "--format", help="Painting format: square, tall scroll, wide handscroll or mixed."),
    p_empty: float = typer.Option(0.1, "--p-empty", help="Share of images with empty captions (classifier-free guidance)."),
) -> None:
    """Render COUNT captioned paintings into OUT; images already complete there are kept."""
    console = Console(stderr=True)
    with Progress(TextColumn("rendering"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("render", total=count)
        result = render_dataset(out, count, size=size, seed=seed, workers=workers, fmt=None if fmt is Fmt.mixed else fmt.value,
                                p_empty=p_empty, progress=lambda done, total: bar.update(task, completed=done, total=total))
    typer.echo(f"wrote {result.rendered} images to {result.out} ({result.skipped} already there, {result.total} in all), "
               f"{result.images_per_s:.1f} images/s")
